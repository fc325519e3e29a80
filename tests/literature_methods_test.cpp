// Unit tests of the literature group (PCB, WIDEN, VaRM, MWA, Localize-and-Stitch) on tiny
// tensors. Expected values are worked out from each paper's definition (see the comments),
// never by calling weld a second way.
#include "method_case.h"
#include "methods/method.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace weld {
namespace {

using namespace test;

TEST(LiteratureMethodsTest, AllAreRegisteredWithTheirParameters) {
	for (const char* name : {"pcb", "widen", "varm", "mwa", "localize_stitch"})
		ASSERT_NE(find_method(name), nullptr) << name;
	const auto& pcb = find_method("pcb")->info();
	EXPECT_EQ(pcb.base, BaseModel::Required);
	ASSERT_EQ(pcb.global_params.size(), 2u);
	EXPECT_EQ(pcb.global_params[0].name, "ratio");
	EXPECT_EQ(pcb.global_params[0].default_value, 0.1);
	EXPECT_EQ(find_method("mwa")->info().base, BaseModel::Ignored);
	EXPECT_EQ(find_method("localize_stitch")->info().model_params[0].default_value, 0.01);
	EXPECT_EQ(find_method("widen")->info().global_params[1].name, "score_calibration_value");
}

// ---- PCB ----
// Base 0, tau_a = [1, -2, 3, 0.5], tau_b = [2, 1, -1, 0.5], N = 2, D = 4. norm = min-max over
// the tensor, softmax over its elements.
//   intra_a = softmax(2 * norm([1, 4, 9, .25])) = softmax(2 * [.0857, .4286, 1, 0])
//   inter_a = softmax(norm(tau_a^2)) + softmax(norm(tau_a * tau_b = [2, -2, -3, .25]))
//   beta_a = intra_a * inter_a = [.05653, .08298, .35571, .03663]
//   beta_b = intra_b * inter_b = [.54429, .04938, .04514, .03884]   (likewise)
// ratio 1 keeps all: tau = (beta_a tau_a + beta_b tau_b) / (beta_a + beta_b)
//   = [1.905909, -0.880811, 2.549558, 0.5].
TEST(LiteratureMethodsTest, PcbWeighsTaskVectorsByBalancingScores) {
	Case c{.sources = {{0, 0, 0, 0}, {1, -2, 3, 0.5f}, {2, 1, -1, 0.5f}}, .base_index = 0, .params = {{"ratio", 1.0}}};
	expect_near(run("pcb", c), {1.905909f, -0.880811f, 2.549558f, 0.5f});
}

// ratio 0.5: each task keeps its scores >= its sorted[floor(0.5 * 4) = 2]: a keeps elements 1, 2;
// b keeps 0, 1. Element 0: only b -> 2; element 1: both -> (.08298 * -2 + .04938 * 1) /
// (.08298 + .04938) = -0.880811; element 2: only a -> 3; element 3: none -> base. With base 1
// (same deltas) and lambda 0.5: 1 + 0.5 * [1, -0.880811, 2, 0] = [2, 0.559594, 2.5, 1].
TEST(LiteratureMethodsTest, PcbDropsLowScoresAndScalesByLambda) {
	Case c{.sources = {{0, 0, 0, 0}, {1, -2, 3, 0.5f}, {2, 1, -1, 0.5f}}, .base_index = 0, .params = {{"ratio", 0.5}}};
	expect_near(run("pcb", c), {2.0f, -0.880811f, 3.0f, 0.0f});
	Case scaled{.sources = {{2, -1, 4, 1.5f}, {1, 1, 1, 1}, {3, 2, 0, 1.5f}},
	            .base_index = 1,
	            .params = {{"ratio", 0.5}, {"lambda", 0.5}}};
	expect_near(run("pcb", scaled), {2.0f, 0.559594f, 2.5f, 1.0f});
}

// One task and ratio 1: every score is positive, so the weighted mean of one task vector is itself.
TEST(LiteratureMethodsTest, PcbOfOneModelIsThatModel) {
	Case c{.sources = {{1, 2, 3}, {1.5f, -2, 3.25f}}, .base_index = 0, .params = {{"ratio", 1.0}}};
	expect_near(run("pcb", c), {1.5f, -2, 3.25f});
}

// ---- WIDEN ----
// Base [[1,0,2],[0,1,1]], a = [[2,0,2],[0,3,1]], b = [[1,1,2],[0,1,3]] (2x3, columns are groups).
// Column norms: base [1, 1, sqrt5]; a [2, 3, sqrt5]; b [1, sqrt2, sqrt13].
// a: magnitude diffs [1, 2, 0] -> ranks [1/3, 2/3, 0]; direction diffs (1 - cos) [0, 0, 0] ->
//    stable ranks [0, 1/3, 2/3].
// b: magnitude diffs [0, .414, 1.369] -> [0, 1/3, 2/3]; direction diffs [0, .293, .132] -> [0, 2/3, 1/3].
// Scores: softmax over the two models per column, except ranks above the model's mean rank
// (1/3) times ratio 1, which get the calibration value 1:
//   magnitude a [s(1/3 - 0), 1, s(0 - 2/3)] = [.58257, 1, .33924]; b [s(-1/3), s(1/3 - 2/3), 1]
//   = [.41743, .41743, 1], where s(x) = 1 / (1 + e^-x) and a rank of exactly 1/3 is not above
//   the mean; direction a [.5, 1/3 -> s(1/3 - 2/3), 1], b [.5, 1, 2/3 -> 1] likewise.
//   weights 0.5 * (magnitude + direction): a [.541285, .708715, .669622], b [.458715, .708715, .708715].
// out = base + sum_i w_i[col] * tau_i = [[1.541285, .708715, 2], [0, 2.417430, 2.417430]].
TEST(LiteratureMethodsTest, WidenRanksMagnitudeAndDirectionPerColumn) {
	Case c{.sources = {{1, 0, 2, 0, 1, 1}, {2, 0, 2, 0, 3, 1}, {1, 1, 2, 0, 1, 3}}, .base_index = 0, .shape = {2, 3}};
	expect_near(run("widen", c), {1.541285f, 0.708715f, 2.0f, 0.0f, 2.417430f, 2.417430f});
}

// Same tensors, ratio 0.5 (threshold 1/6) and calibration 0.5: every rank of 1/3 or 2/3 now
// scores 0.5; only the rank-0 entries keep their softmax: a magnitude col 2 = s(-2/3) = .33924,
// direction col 0 = s(0) = .5; b magnitude col 0 = s(-1/3) = .41743, direction col 0 = .5.
// weights a [.5, .5, (.33924 + .5) / 2 = .41962], b [(.41743 + .5) / 2 = .458715, .5, .5] ->
// out = [[1.5, .5, 2], [0, 2, 2]].
TEST(LiteratureMethodsTest, WidenCalibratesAboveAverageScores) {
	Case c{.sources = {{1, 0, 2, 0, 1, 1}, {2, 0, 2, 0, 3, 1}, {1, 1, 2, 0, 1, 3}},
	       .base_index = 0,
	       .params = {{"above_average_value_ratio", 0.5}, {"score_calibration_value", 0.5}},
	       .shape = {2, 3}};
	expect_near(run("widen", c), {1.5f, 0.5f, 2.0f, 0.0f, 2.0f, 2.0f});
}

// Token embeddings are [vocab, hidden]: groups are rows. Rows of base [1,0,2], [0,1,1];
// a [2,0,2], [0,3,1]; b [1,1,2], [0,1,3]. Row 1 has the larger magnitude and direction change
// in both models (ranks [0, 1/2], mean 1/4): row 1 scores 1 everywhere -> base + tau_a + tau_b;
// row 0 scores softmax(0, 0) = 1/2 -> base + (tau_a + tau_b) / 2.
// out = [[1.5, .5, 2], [0, 3, 3]].
TEST(LiteratureMethodsTest, WidenGroupsTokenEmbeddingsByRow) {
	Case c{.sources = {{1, 0, 2, 0, 1, 1}, {2, 0, 2, 0, 3, 1}, {1, 1, 2, 0, 1, 3}},
	       .base_index = 0,
	       .shape = {2, 3},
	       .tensor_name = "model.embed_tokens.weight"};
	expect_near(run("widen", c), {1.5f, 0.5f, 2.0f, 0.0f, 3.0f, 3.0f});
}

// Vectors: significance |tau| per element, not ranked. Base [1,1,1], a [2,1,0], b [1,3,1.5]:
// |tau_a| = [1, 0, 1] (mean 2/3), |tau_b| = [0, 2, .5] (mean 5/6). Above mean -> 1:
// a [1, s(0 - 2) = .119203, 1], b [s(0 - 1) = .268941, 1, s(.5 - 1) = .377541].
// out = 1 + [1, 2, -1 + .5 * .377541] = [2, 3, .188770].
TEST(LiteratureMethodsTest, WidenVectorsUseAbsoluteChanges) {
	Case c{.sources = {{1, 1, 1}, {2, 1, 0}, {1, 3, 1.5f}}, .base_index = 0, .tensor_name = "model.norm.weight"};
	expect_near(run("widen", c), {2.0f, 3.0f, 0.188770f});
	c.params = {{"above_average_value_ratio", 10.0}}; // nothing calibrated: plain softmax weights
	// a [s(1 - 0) = .731059, s(0 - 2) = .119203, s(1 - .5) = .622459], b the complements.
	// out = 1 + [.731059, 2 * .880797, -.622459 + .5 * .377541] = [1.731059, 2.761594, .566311].
	expect_near(run("widen", c), {1.731059f, 2.761594f, 0.566311f});
}

// One model: the softmax over one model is 1 and the calibration value is 1: weights are 1.
TEST(LiteratureMethodsTest, WidenOfOneModelIsThatModel) {
	Case c{.sources = {{1, 0, 2, 0, 1, 1}, {2, 0.5f, 2, -1, 3, 1}}, .base_index = 0, .shape = {2, 3}};
	expect_near(run("widen", c), {2, 0.5f, 2, -1, 3, 1});
}

// ---- VaRM ----
// Base [1,1,1]; a = [2,1,1]: mean(tau_a^2) = 1/3; b = [1,3,3]: mean(tau_b^2) = 8/3.
// w = [1/9, 8/9]; out = a/9 + 8b/9 = [10/9, 25/9, 25/9].
TEST(LiteratureMethodsTest, VarmWeighsByMeanSquaredChange) {
	Case c{.sources = {{1, 1, 1}, {2, 1, 1}, {1, 3, 3}}, .base_index = 0};
	expect_near(run("varm", c), {10.0f / 9, 25.0f / 9, 25.0f / 9});
}

// A model that did not change this tensor: the reference falls back to equal weights.
TEST(LiteratureMethodsTest, VarmUnchangedModelMeansEqualWeights) {
	Case c{.sources = {{1, 1, 1}, {1, 1, 1}, {1, 3, 3}}, .base_index = 0};
	expect_near(run("varm", c), {1, 2, 2});
}

// ---- MWA ----
// a = [1,2], b = [3,6]. loss 1 and 0.5, penalty 1: w ∝ [1, 2] -> [1/3, 2/3] -> [7/3, 14/3].
// penalty 2: w ∝ [1, 4] -> [.2, .8] -> [2.6, 5.2]. penalty 0: uniform -> [2, 4].
TEST(LiteratureMethodsTest, MwaWeighsByLoss) {
	Case c{.sources = {{1, 2}, {3, 6}}, .source_params = {{{"loss", 1.0}}, {{"loss", 0.5}}}};
	expect_near(run("mwa", c), {7.0f / 3, 14.0f / 3});
	c.params = {{"penalty", 2.0}};
	expect_near(run("mwa", c), {2.6f, 5.2f});
	c.params = {{"penalty", 0.0}};
	expect_near(run("mwa", c), {2, 4});
}

// steps 100 and 300, penalty 1: w ∝ [100, 300] -> [.25, .75] -> [2.5, 5].
TEST(LiteratureMethodsTest, MwaWeighsByStep) {
	Case c{.sources = {{1, 2}, {3, 6}}, .source_params = {{{"step", 100.0}}, {{"step", 300.0}}}};
	expect_near(run("mwa", c), {2.5f, 5.0f});
}

TEST(LiteratureMethodsTest, MwaNeedsOneMetricForEveryModel) {
	Case none{.sources = {{1, 2}, {3, 6}}, .source_params = {{}, {}}};
	EXPECT_THROW(run("mwa", none), Error);
	Case mixed{.sources = {{1, 2}, {3, 6}}, .source_params = {{{"loss", 1.0}}, {{"step", 5.0}}}};
	EXPECT_THROW(run("mwa", mixed), Error);
	Case partial{.sources = {{1, 2}, {3, 6}}, .source_params = {{{"loss", 1.0}}, {}}};
	EXPECT_THROW(run("mwa", partial), Error);
	Case negative{.sources = {{1, 2}, {3, 6}}, .source_params = {{{"loss", -1.0}}, {{"loss", 1.0}}}};
	EXPECT_THROW(run("mwa", negative), Error);
}

// ---- Localize-and-Stitch ----
// Base 1; tau_a = [5,-4,0,1,0], tau_b = [3,0,0,-6,1], density 0.4 -> k = floor(2) = 2 each:
// a keeps elements 0, 1; b keeps 3, 0. Element 0 is in both masks -> (5 + 3) / 2 = 4.
// out = 1 + [4, -4, 0, -6, 0] = [5, -3, 1, -5, 1].
TEST(LiteratureMethodsTest, LocalizeStitchAveragesOverlappingMasks) {
	const Vec base = {1, 1, 1, 1, 1};
	Case c{.sources = {base, {6, -3, 1, 2, 1}, {4, 1, 1, -5, 2}},
	       .base_index = 0,
	       .source_params = {{}, {{"density", 0.4}}, {{"density", 0.4}}}};
	expect_near(run("localize_stitch", c), {5, -3, 1, -5, 1});
	// density 0.1: floor(0.5) = 0 elements kept -> the base.
	c.source_params = {{}, {{"density", 0.1}}, {{"density", 0.1}}};
	expect_near(run("localize_stitch", c), base);
	// density 1 keeps every non-zero change: element 1 only in a -> 1 - 4; element 3 in both ->
	// 1 + (1 - 6) / 2; element 4 only in b -> 1 + 1.
	c.source_params = {{}, {{"density", 1.0}}, {{"density", 1.0}}};
	expect_near(run("localize_stitch", c), {5, -3, 1, -1.5f, 2});
}

// ---- input errors ----
TEST(LiteratureMethodsTest, BaseRequiredMethodsRejectMissingBaseAndLoneBase) {
	for (const char* name : {"pcb", "widen", "varm", "localize_stitch"}) {
		Case no_base{.sources = {{1, 2}, {3, 4}}, .base_index = -1};
		EXPECT_THROW(run(name, no_base), Error) << name;
		Case only_base{.sources = {{1, 2}}, .base_index = 0};
		EXPECT_THROW(run(name, only_base), Error) << name;
	}
	Case uneven{.sources = {{1, 2}, {3}}, .base_index = 0};
	EXPECT_THROW(run("varm", uneven), Error);
}

} // namespace
} // namespace weld
