// Streaming merges: the exact top-k selection over blocks, and tensors larger than one work item
// merged in blocks on several threads, checked against whole-tensor references written here
// from the methods' definitions.
#include "exec/merge.h"
#include "methods/method.h"
#include "methods/reference.h"
#include "streaming_fixture.h"
#include "tensor/convert.h"
#include "tensor/kernels.h"
#include "tensor/topk.h"
#include "test_util.h"
#include "testing/tiny_llama.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <sstream>

namespace weld {
namespace {

namespace fs = std::filesystem;

// Differences of bfloat16-rounded values, like real fine-tune deltas: many exact magnitude ties.
std::vector<float> bf16_deltas(size_t n, uint64_t seed) {
	std::mt19937_64 rng(seed);
	std::normal_distribution<float> weight(0, 0.02f), change(0, 0.001f);
	std::vector<float> out(n);
	for (float& d : out) {
		const float base = bf16_to_f32(f32_to_bf16(weight(rng)));
		d = bf16_to_f32(f32_to_bf16(base + change(rng))) - base;
	}
	return out;
}

// Streams values through a TopKSelection, blocks in reverse order on alternating workers.
std::vector<float> streamed_top_k(std::vector<float> values, uint64_t k) {
	const uint64_t blocks = block_count(values.size());
	TopKSelection selection(values.size(), k, blocks, 2);
	auto block = [&](uint64_t b) {
		const uint64_t offset = b * kBlockElements;
		return std::span<float>(values).subspan(offset, std::min<uint64_t>(kBlockElements, values.size() - offset));
	};
	for (int pass = 0; pass < TopKSelection::kPasses; ++pass) {
		if (!selection.wants_pass(pass)) continue;
		for (uint64_t b = blocks; b-- > 0;)
			selection.observe(pass, b, block(b), static_cast<unsigned>(b % 2));
		selection.end_pass(pass);
	}
	for (uint64_t b = 0; b < blocks; ++b)
		selection.apply(b, block(b));
	return values;
}

// The definition: order by magnitude, largest first, lower index first among equals; keep k.
std::vector<float> sorted_top_k(std::vector<float> values, uint64_t k) {
	std::vector<size_t> order(values.size());
	std::iota(order.begin(), order.end(), 0);
	std::stable_sort(order.begin(), order.end(),
	                 [&](size_t a, size_t b) { return std::fabs(values[a]) > std::fabs(values[b]); });
	for (size_t r = k; r < order.size(); ++r)
		values[order[r]] = 0.0f;
	return values;
}

TEST(TopKSelection, MatchesSortingWithManyTies) {
	const auto values = bf16_deltas(5 * kBlockElements + 123, 7);
	const uint64_t n = values.size();
	for (uint64_t k : {uint64_t{1}, n / 3, n / 2, n - 1, n})
		EXPECT_EQ(streamed_top_k(values, k), sorted_top_k(values, k)) << "k = " << k;
}

TEST(TopKSelection, MatchesSortingWithDistinctValuesAndExactTiesAtTheThreshold) {
	// Continuous values put several values in the threshold's bin (pass 2); a run of equal
	// values straddling blocks makes the cutoff fall inside a block.
	std::mt19937_64 rng(3);
	std::normal_distribution<float> normal(0, 1);
	std::vector<float> values(4 * kBlockElements + 5);
	for (float& v : values)
		v = normal(rng);
	const uint64_t n = values.size();
	for (uint64_t k : {n / 4, n / 2})
		EXPECT_EQ(streamed_top_k(values, k), sorted_top_k(values, k)) << "k = " << k;
	std::vector<float> ties(values.size(), 0.5f);
	for (size_t j = 0; j < ties.size(); j += 3)
		ties[j] = -1.0f;
	EXPECT_EQ(streamed_top_k(ties, n / 2), sorted_top_k(ties, n / 2));
	EXPECT_EQ(streamed_top_k(ties, n / 3 + kBlockElements + 17), sorted_top_k(ties, n / 3 + kBlockElements + 17));
	// Every value in one 16-bit bin, seven distinct ones: too many to keep, so pass 2 counts ties.
	std::vector<float> crowded(values.size());
	for (size_t j = 0; j < crowded.size(); ++j)
		crowded[j] = (j % 2 ? -1.0f : 1.0f) + static_cast<float>((j * 5) % 7) * 0x1p-20f;
	for (uint64_t k : {n / 5, n / 2 + 3})
		EXPECT_EQ(streamed_top_k(crowded, k), sorted_top_k(crowded, k)) << "k = " << k;
}

constexpr const char* kEmbedding = "model.embed_tokens.weight";

TEST_F(StreamingMergeTest, TiesMatchesItsDefinitionOnEveryThreadCount) {
	const auto one = merge("ties", 1);
	const std::string one_bytes = last_bytes_;
	merge("ties", 3);
	EXPECT_EQ(last_bytes_, one_bytes) << "thread count changed the output";

	// TIES by its definition: top half of each task vector by magnitude, weights 0.75/1/1.25,
	// sign of the weighted sum elects, agreeing entries averaged by their weights.
	const auto base = inputs("base")[kEmbedding];
	std::vector<std::vector<float>> kept;
	for (int i = 1; i <= 3; ++i) {
		const auto x = inputs("ft" + std::to_string(i))[kEmbedding];
		std::vector<float> delta(x.size());
		for (size_t j = 0; j < x.size(); ++j)
			delta[j] = x[j] - base[j];
		kept.push_back(sorted_top_k(delta, delta.size() / 2));
	}
	const std::vector<double> weights{0.75, 1.0, 1.25};
	const auto& merged = one.at(kEmbedding);
	ASSERT_EQ(merged.size(), base.size());
	size_t mismatches = 0;
	for (size_t j = 0; j < base.size(); ++j) {
		double total = 0;
		for (size_t i = 0; i < 3; ++i)
			total += weights[i] * kept[i][j];
		double sum = 0, weight = 0;
		for (size_t i = 0; i < 3; ++i) {
			const double w = weights[i] * kept[i][j];
			if (total >= 0 ? w > 0 : w < 0) {
				sum += w;
				weight += weights[i];
			}
		}
		const auto expected = static_cast<float>(base[j] + static_cast<float>(weight == 0 ? sum : sum / weight));
		mismatches += merged[j] == expected ? 0 : 1;
	}
	EXPECT_EQ(mismatches, 0u);
}

TEST_F(StreamingMergeTest, DareLinearAndTaskArithmeticDoNotDependOnThreads) {
	for (const char* method : {"dare_ties", "dare_linear", "task_arithmetic", "linear"}) {
		SCOPED_TRACE(method);
		merge(method, 1);
		const std::string one = last_bytes_;
		merge(method, 2);
		EXPECT_EQ(last_bytes_, one);
	}
}

TEST_F(StreamingMergeTest, SlerpMatchesItsDefinitionOnEveryThreadCount) {
	const std::string recipe =
	    "merge_method: slerp\nparameters: {t: 0.3}\nmodels:\n  - model: " + (dir_ / "base").string() +
	    "\n  - model: " + (dir_ / "ft1").string() + "\n";
	const auto merged = merge_recipe(recipe, 2).at(kEmbedding);
	const std::string two = last_bytes_;
	merge_recipe(recipe, 1);
	EXPECT_EQ(last_bytes_, two);
	const auto a = inputs("base")[kEmbedding], b = inputs("ft1")[kEmbedding];
	double dot = 0, aa = 0, bb = 0;
	for (size_t j = 0; j < a.size(); ++j) {
		dot += static_cast<double>(a[j]) * b[j];
		aa += static_cast<double>(a[j]) * a[j];
		bb += static_cast<double>(b[j]) * b[j];
	}
	const double theta = std::acos(dot / std::sqrt(aa * bb));
	const double s0 = std::sin(0.7 * theta) / std::sin(theta), s1 = std::sin(0.3 * theta) / std::sin(theta);
	double worst = 0;
	for (size_t j = 0; j < a.size(); ++j)
		worst = std::max(worst, std::fabs(merged[j] - (s0 * a[j] + s1 * b[j])));
	EXPECT_LT(worst, 1e-6);
}

TEST_F(StreamingMergeTest, DareKeepsItsDrawsAndRescalesToTheL1Norm) {
	const auto merged = merge("dare_linear", 2).at(kEmbedding);
	const auto base = inputs("base")[kEmbedding];
	// dare_linear by its definition: keep entry j of model i when random_uniform(key, j) < 0.5,
	// rescale each task vector to its L1 norm, sum with weights 0.75/1/1.25 (no normalize).
	std::vector<double> mixed(base.size(), 0.0);
	for (int i = 1; i <= 3; ++i) {
		const auto x = inputs("ft" + std::to_string(i))[kEmbedding];
		// Sources in recipe order, the base (added by the plan) last.
		const uint64_t key = random_stream_key(5, kEmbedding, static_cast<uint64_t>(i - 1));
		std::vector<float> delta(x.size());
		double before = 0, after = 0;
		for (size_t j = 0; j < x.size(); ++j) {
			delta[j] = x[j] - base[j];
			before += std::fabs(delta[j]);
			if (!(random_uniform(key, j) < 0.5)) delta[j] = 0;
			after += std::fabs(delta[j]);
		}
		for (size_t j = 0; j < x.size(); ++j)
			mixed[j] += (0.5 + 0.25 * i) * delta[j] * (before / after);
	}
	double worst = 0;
	for (size_t j = 0; j < base.size(); ++j)
		worst = std::max(worst, std::fabs(merged[j] - (base[j] + mixed[j])));
	EXPECT_LT(worst, 1e-6);
}

TEST_F(StreamingMethodsTest, BreadcrumbsStreamsTheSameBytesAsTheWholeTensorMerge) {
	// No rescale: the same operations in the same order, so the same bytes.
	EXPECT_EQ(merge_against_reference("breadcrumbs", "", "density: 0.6, gamma: 0.05"), 0.0);
	EXPECT_EQ(merge_against_reference("breadcrumbs_ties", "", "density: 0.6, gamma: 0.05"), 0.0);
	EXPECT_EQ(merge_against_reference("breadcrumbs_ties", "normalize: false", "density: 0.3, gamma: 0"), 0.0);
	// Rescale: the L1 norms are summed per block, then in block order; within float rounding.
	EXPECT_LT(merge_against_reference("breadcrumbs", "rescale: true", "density: 0.5, gamma: 0.01"), 1e-7);
}

TEST_F(StreamingMethodsTest, DellaStreamsRowsThatCrossBlocks) {
	// Rows of 1000 elements: most blocks hold a row's end and the next one's start. Without
	// rescale the same bytes; della rescales by default (L1 norms per block): float rounding.
	EXPECT_EQ(merge_against_reference("della", "rescale: false", "density: 0.5, epsilon: 0.2"), 0.0);
	EXPECT_EQ(merge_against_reference("della_linear", "rescale: false", "density: 0.4, epsilon: 0.1", true, 2), 0.0);
	EXPECT_LT(merge_against_reference("della", "", "density: 0.5, epsilon: 0.2", true, 2), 1e-7);
	EXPECT_LT(merge_against_reference("della_linear", "", "density: 0.6, epsilon: 0.15", true, 2), 1e-7);
}

TEST_F(StreamingMethodsTest, SceStreamsTheSameMergeWithinRounding) {
	// The variance selection is exact; the task weights' sums of squares add per block.
	EXPECT_LT(merge_against_reference("sce", "select_topk: 0.3", "", false), 1e-7);
	EXPECT_LT(merge_against_reference("sce", "", "", false), 1e-7);
}

TEST_F(StreamingMethodsTest, ConsensusStreamsTheSameBytesAsTheWholeTensorMerge) {
	EXPECT_EQ(merge_against_reference("consensus_ta", "k: 2", "tall_lambda: 0.5"), 0.0);
	EXPECT_EQ(merge_against_reference("consensus_ties", "k: 2", "density: 0.5, tall_lambda: 0.6"), 0.0);
}

TEST_F(StreamingMethodsTest, ModelStockStreamsTheSameMergeWithinRounding) {
	// The dot products add per block, then in block order.
	EXPECT_LT(merge_against_reference("model_stock", "", "", false), 1e-7);
}

TEST_F(StreamingMethodsTest, ModelStockFilterWiseStreamsEachRowsMergeWithinRounding) {
	// One t per row of 1000 elements, rows crossing blocks: a row's segments add in block order.
	EXPECT_LT(merge_against_reference("model_stock", "filter_wise: true", "", false), 1e-7);
	const MergeMethod& method = *find_method("model_stock");
	MergeInput input;
	input.tensor_name = "w";
	input.base_index = 3;
	input.params = {{"filter_wise", 1.0}};
	input.shape = {1000, 1000};
	EXPECT_NE(method.block_merge(input, 4, 1'000'000, 1), nullptr);
	// 1000 rows and 62 blocks, 9 sums each, a t per row, each block's vector.
	EXPECT_EQ(method.working_bytes(input, 4, 1'000'000), (1062 * 9 + 1000) * 8 + 62 * sizeof(std::vector<double>));
	input.shape = {62500, 16}; // rows of 16: more pair sums than values, whole tensors
	EXPECT_EQ(method.block_merge(input, 4, 1'000'000, 1), nullptr);
	EXPECT_EQ(method.working_bytes(input, 4, 1'000'000), 0u);
}

TEST_F(StreamingMethodsTest, NearswapStreamsTheSameBytesAsTheWholeTensorMerge) {
	EXPECT_EQ(merge_against_reference("nearswap", "t: 0.001", "", false, 1), 0.0);
}

} // namespace
} // namespace weld
