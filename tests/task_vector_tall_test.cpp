// TALL masks, consensus masks and single-expert reconstruction (tensor/tall.h), by hand.
#include "tensor/tall.h"

#include <gtest/gtest.h>

#include <vector>

namespace weld {
namespace {

using Mask = std::vector<uint8_t>;

// Task vectors A = [1, 0, 2, 0.125], B = [1, 3, -2, 0], C = [0, 0, 0.5, -3];
// tau_MTL = A + B + C = [2, 3, 0.5, -2.875].
const std::vector<float> kA = {1, 0, 2, 0.125f}, kB = {1, 3, -2, 0}, kC = {0, 0, 0.5f, -3};
const std::vector<float> kMtl = {2, 3, 0.5f, -2.875f};

TEST(TaskVectorTallTest, MasksCompareEachTaskWithTheRest) {
	std::vector<Mask> masks;
	// lambda 0.6: A: 1 > 0.6, 0 > 1.8, 2 > 0.9, 0.125 > 1.8 -> [1, 0, 1, 0];
	// B: 1 > 0.6, 3 > 0, 2 > 1.5, 0 > 1.725 -> [1, 1, 1, 0]; C: 0 > 1.2, 0 > 1.8, 0.5 > 0,
	// 3 > 0.075 -> [0, 0, 1, 1].
	tall_masks(kMtl, {kA, kB, kC}, {0.6, 0.6, 0.6}, masks);
	ASSERT_EQ(masks.size(), 3u);
	EXPECT_EQ(masks[0], (Mask{1, 0, 1, 0}));
	EXPECT_EQ(masks[1], (Mask{1, 1, 1, 0}));
	EXPECT_EQ(masks[2], (Mask{0, 0, 1, 1}));
	// Per-task lambdas; lambda 1 on A makes e0 a tie (1 > 1 is false: strict).
	tall_masks(kMtl, {kA, kB, kC}, {1, 0.6, 0}, masks);
	EXPECT_EQ(masks[0], (Mask{0, 0, 1, 0}));
	EXPECT_EQ(masks[1], (Mask{1, 1, 1, 0}));
	// lambda 0: every nonzero entry of the task vector.
	EXPECT_EQ(masks[2], (Mask{0, 0, 1, 1}));
}

TEST(TaskVectorTallTest, ConsensusCountsTasks) {
	const std::vector<Mask> masks = {{1, 0, 1, 0}, {1, 1, 1, 0}, {0, 0, 1, 1}}; // counts [2, 1, 3, 1]
	Mask consensus;
	consensus_mask(masks, 2, consensus);
	EXPECT_EQ(consensus, (Mask{1, 0, 1, 0}));
	consensus_mask(masks, 3, consensus);
	EXPECT_EQ(consensus, (Mask{0, 0, 1, 0}));
	consensus_mask(masks, 0, consensus);
	EXPECT_EQ(consensus, (Mask{1, 1, 1, 1}));
	consensus_mask({}, 2, consensus);
	EXPECT_TRUE(consensus.empty());
}

TEST(TaskVectorTallTest, ReconstructsAnExpert) {
	// base [1, 1, 1, 1] + A's mask [1, 0, 1, 0] (.) tau_MTL = [3, 1, 1.5, 1].
	const std::vector<float> base = {1, 1, 1, 1};
	std::vector<float> out(4);
	tall_reconstruct(base, kMtl, Mask{1, 0, 1, 0}, out);
	EXPECT_EQ(out, (std::vector<float>{3, 1, 1.5f, 1}));
	// With a single task, tau_MTL = tau and the mask (lambda anything, |tau| > 0) is its support:
	// the expert comes back exactly.
	std::vector<Mask> masks;
	tall_masks(kC, {kC}, {0.6}, masks);
	tall_reconstruct(base, kC, masks[0], out);
	EXPECT_EQ(out, (std::vector<float>{1, 1, 1.5f, -2}));
}

} // namespace
} // namespace weld
