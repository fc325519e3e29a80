// Unit tests of the mergekit-parity methods (model_stock, nuslerp, multislerp, karcher,
// nearswap, ram, ramplus_tl, arcee_fusion) on tiny tensors. Expected values are worked out by
// hand from mergekit's definitions (see the comments), never by calling weld code another way.
#include "method_case.h"
#include "methods/method.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

namespace weld {
namespace {

using namespace test;

// The hand-derived values here hold to 2e-6.
constexpr float kTolerance = 2e-6f;

// ---- registry ----

TEST(MergekitExtraMethodsTest, RegisteredWithMergekitNamesAndDefaults) {
	for (const char* name :
	     {"model_stock", "nuslerp", "multislerp", "karcher", "nearswap", "ram", "ramplus_tl", "arcee_fusion"})
		ASSERT_NE(find_method(name), nullptr) << name;
	EXPECT_EQ(param("model_stock", "filter_wise").default_value, 0);
	EXPECT_EQ(param("nuslerp", "nuslerp_flatten").default_value, 1);
	EXPECT_EQ(param("nuslerp", "nuslerp_row_wise").default_value, 0);
	EXPECT_TRUE(param("nuslerp", "weight").required);
	EXPECT_EQ(param("multislerp", "normalize_weights").default_value, 1);
	EXPECT_EQ(param("multislerp", "eps").default_value, 1e-8);
	EXPECT_TRUE(param("multislerp", "weight").required);
	EXPECT_EQ(param("karcher", "max_iter").default_value, 10);
	EXPECT_EQ(param("karcher", "tol").default_value, 1e-5);
	EXPECT_TRUE(param("nearswap", "t").required);
	EXPECT_EQ(param("ram", "epsilon").default_value, 1e-5);
	EXPECT_EQ(param("ramplus_tl", "epsilon").default_value, 1e-5);
	EXPECT_EQ(param("ramplus_tl", "r").default_value, 0.1);
	EXPECT_EQ(param("ramplus_tl", "alpha").default_value, 0.2);
	EXPECT_EQ(find_param("ram", "r"), nullptr);
	EXPECT_TRUE(find_method("arcee_fusion")->info().global_params.empty());
	EXPECT_TRUE(find_method("arcee_fusion")->info().model_params.empty());
	for (const char* name : {"model_stock", "nearswap", "ram", "ramplus_tl", "arcee_fusion"})
		EXPECT_EQ(find_method(name)->info().base, BaseModel::Required) << name;
	EXPECT_EQ(find_method("model_stock")->info().min_sources, 3u);
	EXPECT_EQ(find_method("nearswap")->info().max_sources, 2u);
	EXPECT_EQ(find_method("arcee_fusion")->info().max_sources, 2u);
}

// ---- model_stock ----

// B = (1,2,3), Δ1 = (1,0,0), Δ2 = (3,4,0): cos = 3/5 = 0.6, N = 2,
// t = 2·0.6 / (1 + 0.6) = 0.75; mean(M) = ((2,2,3) + (4,6,3))/2 = (3,4,3);
// 0.75·(3,4,3) + 0.25·(1,2,3) = (2.5, 3.5, 3.0). The base sits in the middle.
TEST(MergekitExtraMethodsTest, ModelStockTwoModels) {
	expect_near(run("model_stock", {.sources = {{2, 2, 3}, {1, 2, 3}, {4, 6, 3}}, .base_index = 1}), {2.5, 3.5, 3.0},
	            kTolerance);
}

// B = (1,1,1), Δ = (1,0,0), (3,4,0), (0,0,2): cosines 0.6, 0, 0, mean 0.2;
// t = 3·0.2 / (1 + 2·0.2) = 3/7; mean Δ = (4/3, 4/3, 2/3);
// out = B + t·mean Δ = (1 + 4/7, 1 + 4/7, 1 + 2/7).
TEST(MergekitExtraMethodsTest, ModelStockThreeModelsUsesTheMeanPairwiseCosine) {
	expect_near(run("model_stock", {.sources = {{1, 1, 1}, {2, 1, 1}, {4, 5, 1}, {1, 1, 3}}, .base_index = 0}),
	            {1.5714286f, 1.5714286f, 1.2857143f}, kTolerance);
}

// 2x2: B rows (0,0),(1,1); M1 rows (1,0),(2,1); M2 rows (0,1),(4,5).
// filter_wise: row 0 Δs (1,0),(0,1): cos 0, t 0 -> (0,0); row 1 Δs (1,0),(3,4): cos 0.6,
// t 0.75, mean (3,3) -> 0.75·3 + 0.25·1 = 2.5.
// whole tensor: Δ1 = (1,0,1,0), Δ2 = (0,1,3,4): cos = 3/(√2·√26) = 0.4160251,
// t = 2c/(1+c) = 0.5875957; mean = (0.5,0.5,3,3) -> (0.5t, 0.5t, 1+2t, 1+2t).
TEST(MergekitExtraMethodsTest, ModelStockFilterWiseComputesOneTPerRow) {
	Case c{.sources = {{0, 0, 1, 1}, {1, 0, 2, 1}, {0, 1, 4, 5}}, .base_index = 0, .shape = {2, 2}};
	c.params = {{"filter_wise", 1}};
	expect_near(run("model_stock", c), {0, 0, 2.5, 2.5}, kTolerance);
	c.params = {{"filter_wise", 0}};
	expect_near(run("model_stock", c), {0.2937979f, 0.2937979f, 2.1751914f, 2.1751914f}, kTolerance);
}

// Models equal to the base: zero task vectors, cosine 0 (norms clamped), t = 0 -> the base.
TEST(MergekitExtraMethodsTest, ModelStockZeroTaskVectorsGiveTheBase) {
	expect_near(run("model_stock", {.sources = {{1, -2}, {1, -2}, {1, -2}}, .base_index = 0}), {1, -2}, kTolerance);
}

TEST(MergekitExtraMethodsTest, ModelStockErrors) {
	// base + one model: too few sources; no base.
	EXPECT_THROW(run("model_stock", {.sources = {{1, 2}, {3, 4}}, .base_index = 0}), Error);
	EXPECT_THROW(run("model_stock", {.sources = {{1, 2}, {3, 4}, {5, 6}}, .base_index = -1}), Error);
	// Δ1 = (1,0), Δ2 = (-1,0): cos -1, 1 + (N-1)cos = 0 -> t infinite.
	EXPECT_THROW(run("model_stock", {.sources = {{0, 0}, {1, 0}, {-1, 0}}, .base_index = 0}), Error);
}

// ---- nuslerp ----

// v0 = (2,0), v1 = (0,1), weights 1 and 3: t = 3/4, θ = π/2, sin θ = 1;
// out = sin(π/8)·v0 + sin(3π/8)·v1 = (2·0.3826834, 0.9238795).
// Swapping the models with their weights gives t = 1/4 and the same result.
TEST(MergekitExtraMethodsTest, NuSlerpWithoutBase) {
	expect_near(run("nuslerp", {.sources = {{2, 0}, {0, 1}}, .source_params = weights({1, 3})}),
	            {0.7653669f, 0.9238795f}, kTolerance);
	expect_near(run("nuslerp", {.sources = {{0, 1}, {2, 0}}, .source_params = weights({3, 1})}),
	            {0.7653669f, 0.9238795f}, kTolerance);
}

// Same task vectors on the base (1,1,1): out = base + (0.7653669, 0.9238795, 0).
TEST(MergekitExtraMethodsTest, NuSlerpWithBaseSlerpsTaskVectors) {
	Case c{.sources = {{1, 1, 1}, {3, 1, 1}, {1, 2, 1}}, .base_index = 0};
	c.source_params = {{}, {{"weight", 1}}, {{"weight", 3}}};
	expect_near(run("nuslerp", c), {1.7653669f, 1.9238795f, 1}, kTolerance);
}

// Parallel vectors: lerp, 0.25·(1,2) + 0.75·(2,4) = (1.75, 3.5). Weights summing to 0: t = 0.5,
// θ = π/2 -> sin(π/4)·(1,0) + sin(π/4)·(0,1).
TEST(MergekitExtraMethodsTest, NuSlerpColinearAndZeroWeightSum) {
	expect_near(run("nuslerp", {.sources = {{1, 2}, {2, 4}}, .source_params = weights({1, 3})}), {1.75, 3.5},
	            kTolerance);
	expect_near(run("nuslerp", {.sources = {{1, 0}, {0, 1}}, .source_params = weights({1, -1})}),
	            {0.7071068f, 0.7071068f}, kTolerance);
}

// 2x2, t = 0.5. Rows (flatten off): M0 rows (1,0),(3,4), M1 rows (0,1),(6,8):
// row 0 at θ = π/2 -> sin(π/4)·each = (0.7071068, 0.7071068); row 1 parallel -> mean (4.5, 6).
// Columns (row_wise): M0 = [[1,3],[0,4]], M1 = [[0,6],[1,8]] hold the same vectors as columns.
TEST(MergekitExtraMethodsTest, NuSlerpRowsAndColumns) {
	Case rows{.sources = {{1, 0, 3, 4}, {0, 1, 6, 8}}, .source_params = weights({1, 1}), .shape = {2, 2}};
	rows.params = {{"nuslerp_flatten", 0}};
	expect_near(run("nuslerp", rows), {0.7071068f, 0.7071068f, 4.5, 6}, kTolerance);
	Case columns{.sources = {{1, 3, 0, 4}, {0, 6, 1, 8}}, .source_params = weights({1, 1}), .shape = {2, 2}};
	columns.params = {{"nuslerp_flatten", 0}, {"nuslerp_row_wise", 1}};
	expect_near(run("nuslerp", columns), {0.7071068f, 4.5, 0.7071068f, 6}, kTolerance);
	// row_wise while flatten is on is ignored: one vector, v0 = (1,3,0,4), v1 = (0,6,1,8),
	// cos = 50/(√26·√101); at t = 0.5 both coefficients are sin(θ/2)/sin θ = 1/√(2(1 + cos))
	// = 0.5030636, so out = 0.5030636·(v0 + v1).
	columns.params = {{"nuslerp_row_wise", 1}};
	expect_near(run("nuslerp", columns), {0.5030636f, 4.5275728f, 0.5030636f, 6.0367638f}, 4e-6f);
}

TEST(MergekitExtraMethodsTest, NuSlerpErrors) {
	// Base plus one model; three models without a base; a missing weight.
	Case two{.sources = {{1, 0}, {0, 1}}, .base_index = 0, .source_params = weights({1, 1})};
	EXPECT_THROW(run("nuslerp", two), Error);
	EXPECT_THROW(run("nuslerp", {.sources = {{1}, {2}, {3}}, .source_params = weights({1, 1, 1})}), Error);
	EXPECT_THROW(run("nuslerp", {.sources = {{1}, {2}, {3}, {4}}, .source_params = weights({1, 1, 1, 1})}), Error);
	EXPECT_THROW(run("nuslerp", {.sources = {{1, 0}, {0, 1}}, .source_params = {{{"weight", 1}}, {}}}), Error);
}

// ---- multislerp ----

// (3,4) and (0,2), weights 1,1 -> 0.5 each. Units (0.6,0.8), (0,1); mean (0.3,0.9), norm √0.9;
// the tangent vectors at the mean sum to zero, so the result is mean/|mean| = (0.3162278,
// 0.9486833) scaled by the mean norm 0.5·5 + 0.5·2 = 3.5 -> (1.1067972, 3.3203915).
TEST(MergekitExtraMethodsTest, MultiSlerpTwoModels) {
	expect_near(run("multislerp", {.sources = {{3, 4}, {0, 2}}, .source_params = weights({1, 1})}),
	            {1.1067972f, 3.3203915f}, kTolerance);
	// normalize_weights off: weights 1,1 double the scale (5 + 2 = 7), same direction.
	Case raw{.sources = {{3, 4}, {0, 2}}, .params = {{"normalize_weights", 0}}, .source_params = weights({1, 1})};
	expect_near(run("multislerp", raw), {2.2135944f, 6.6407831f}, 4e-6f);
}

// With base (1,-1): the task vectors are (3,4) and (0,2) again -> base + (1.1067972, 3.3203915).
TEST(MergekitExtraMethodsTest, MultiSlerpWithBaseWorksOnTaskVectors) {
	Case c{.sources = {{4, 3}, {1, -1}, {1, 1}}, .base_index = 1};
	c.source_params = {{{"weight", 2}}, {}, {{"weight", 2}}};
	expect_near(run("multislerp", c), {2.1067972f, 2.3203915f}, kTolerance);
}

// Three orthogonal unit vectors, equal weights: direction (1,1,1)/√3, scale 1.
TEST(MergekitExtraMethodsTest, MultiSlerpThreeModelsIsSymmetric) {
	const Vec expected = {0.5773503f, 0.5773503f, 0.5773503f};
	expect_near(run("multislerp", {.sources = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}, .source_params = weights({1, 1, 1})}),
	            expected, kTolerance);
	expect_near(run("multislerp", {.sources = {{0, 0, 1}, {1, 0, 0}, {0, 1, 0}}, .source_params = weights({1, 1, 1})}),
	            expected, kTolerance);
}

// Antipodal pair: the unit mean is zero -> mergekit's linear fallback 0.5·1 + 0.5·(-3) = -1.
// Three sources whose unit mean is zero: error. One model: returned as it is.
TEST(MergekitExtraMethodsTest, MultiSlerpEdgeCases) {
	expect_near(run("multislerp", {.sources = {{1, 0}, {-3, 0}}, .source_params = weights({1, 1})}), {-1, 0},
	            kTolerance);
	EXPECT_THROW(run("multislerp", {.sources = {{1, 0}, {-1, 0}, {0, 0}}, .source_params = weights({1, 1, 1})}), Error);
	expect_near(run("multislerp", {.sources = {{5, 7}}, .source_params = weights({0.3})}), {5, 7}, kTolerance);
	EXPECT_THROW(run("multislerp", {.sources = {{1, 0}, {0, 1}}, .source_params = weights({1, -1})}), Error);
	EXPECT_THROW(run("multislerp", {.sources = {{1, 0}}, .base_index = 0}), Error);
}

// ---- karcher ----

// (1,0) and (0,2): units at 0° and 90°, the mean direction 45° is already the Karcher mean;
// scale = (1 + 2)/2 = 1.5 -> 1.5·(0.7071068, 0.7071068).
TEST(MergekitExtraMethodsTest, KarcherTwoVectors) {
	expect_near(run("karcher", {.sources = {{1, 0}, {0, 2}}}), {1.0606602f, 1.0606602f}, kTolerance);
}

// (1,0), (2,0), (0,3): units at 0°, 0°, 90°. On a circle the Karcher mean is the mean angle,
// 30°; the start (normalized mean, atan(1/2) = 26.57°) reaches it in one exact step.
// Scale (1+2+3)/3 = 2 -> (2cos 30°, 2 sin 30°) = (1.7320508, 1). With max_iter 0 the start
// stays: (2/3,1/3)/|(2/3,1/3)| · 2 = (1.7888544, 0.8944272).
TEST(MergekitExtraMethodsTest, KarcherIteratesToTheMeanAngle) {
	Case c{.sources = {{1, 0}, {2, 0}, {0, 3}}};
	expect_near(run("karcher", c), {1.7320508f, 1.0f}, 1e-5f);
	c.params = {{"max_iter", 0}};
	expect_near(run("karcher", c), {1.7888544f, 0.8944272f}, kTolerance);
	c.sources = {{0, 3}, {1, 0}, {2, 0}}; // order does not matter
	c.params = {};
	expect_near(run("karcher", c), {1.7320508f, 1.0f}, 1e-5f);
}

// A zero source is left out of the direction but counts in the scale: (0 + 1 + 1)/3 = 2/3 ->
// 2/3·(0.7071068, 0.7071068). All zero -> zero. One source -> itself. The base, when listed,
// is just another source.
TEST(MergekitExtraMethodsTest, KarcherZeroAndSingleSources) {
	expect_near(run("karcher", {.sources = {{0, 0}, {1, 0}, {0, 1}}}), {0.4714045f, 0.4714045f}, kTolerance);
	expect_near(run("karcher", {.sources = {{0, 0}, {0, 0}}}), {0, 0}, kTolerance);
	expect_near(run("karcher", {.sources = {{3, -4, 1}}}), {3, -4, 1}, kTolerance);
	expect_near(run("karcher", {.sources = {{1, 0}, {0, 2}}, .base_index = 0}), {1.0606602f, 1.0606602f}, kTolerance);
}

TEST(MergekitExtraMethodsTest, KarcherRejectsFractionalMaxIter) {
	EXPECT_THROW(run("karcher", {.sources = {{1, 0}, {0, 1}}, .params = {{"max_iter", 2.5}}}), Error);
}

// ---- nearswap ----

// base (0,0,0,1), model (0.05,0.2,-1,1), t = 0.1: weights clamp(0.1/|Δ|) = 1 (0.1/0.05 = 2),
// 0.5, 0.1, 1 (|Δ| = 0 clamps to 1e-6) -> (0.05, 0.1, -0.1, 1).
TEST(MergekitExtraMethodsTest, NearSwapTakesNearValues) {
	Case c{.sources = {{0.05f, 0.2f, -1, 1}, {0, 0, 0, 1}}, .base_index = 1, .params = {{"t", 0.1}}};
	expect_near(run("nearswap", c), {0.05f, 0.1f, -0.1f, 1}, kTolerance);
	c.params = {{"t", 0}}; // t = 0: the base
	expect_near(run("nearswap", c), {0, 0, 0, 1}, kTolerance);
}

TEST(MergekitExtraMethodsTest, NearSwapErrors) {
	EXPECT_THROW(run("nearswap", {.sources = {{1}, {2}}, .base_index = 0}), Error); // no t
	EXPECT_THROW(run("nearswap", {.sources = {{1}, {2}, {3}}, .base_index = 0, .params = {{"t", 1}}}), Error);
	EXPECT_THROW(run("nearswap", {.sources = {{1}, {2}}, .base_index = -1, .params = {{"t", 1}}}), Error);
}

// ---- ram / ramplus_tl ----

// base 1; Δ1 = (1,0,2,~1e-6,0), Δ2 = (0,3,4,0,0), Δ3 = (0,0,0,0,-2); epsilon 1e-5.
// Element 0: only model 1 -> +1; 1: only model 2 -> +3; 2: both -> (2+4)/2 = 3;
// 3: below epsilon -> base; 4: only model 3 -> -2.
Case ram_case() {
	return {.sources = {{1, 1, 1, 1, 1}, {2, 1, 3, 1.000001f, 1}, {1, 4, 5, 1, 1}, {1, 1, 1, 1, -1}}, .base_index = 0};
}

TEST(MergekitExtraMethodsTest, RamAveragesOnlyOverlappingChanges) {
	expect_near(run("ram", ram_case()), {2, 4, 4, 1, -1}, kTolerance);
	expect_near(run("ram", {.sources = {{1, 2}}, .base_index = 0}), {1, 2}, kTolerance); // base alone
}

// Shared/unique counts per model: model 1 one/one -> ρ 1; model 2 one/one -> ρ 1; model 3
// zero/one -> ρ 0. Defaults r 0.1, alpha 0.2: λ = 1 + 0.1·min(1, 0.2) = 1.02 for models 1, 2,
// 1 for model 3 -> (1 + 1.02, 1 + 3.06, 4, 1, -1). r 0.5, alpha 0.8: λ 1.4 -> (2.4, 5.2, ...).
// r 0.5, alpha 5: ρ = 1 unclipped, λ 1.5 -> (2.5, 5.5, ...).
TEST(MergekitExtraMethodsTest, RamPlusScalesUniqueChanges) {
	Case c = ram_case();
	expect_near(run("ramplus_tl", c), {2.02f, 4.06f, 4, 1, -1}, kTolerance);
	c.params = {{"r", 0.5}, {"alpha", 0.8}};
	expect_near(run("ramplus_tl", c), {2.4f, 5.2f, 4, 1, -1}, kTolerance);
	c.params = {{"r", 0.5}, {"alpha", 5}};
	expect_near(run("ramplus_tl", c), {2.5f, 5.5f, 4, 1, -1}, kTolerance);
}

TEST(MergekitExtraMethodsTest, RamNeedsABase) {
	EXPECT_THROW(run("ram", {.sources = {{1}, {2}}}), Error);
	EXPECT_THROW(run("ramplus_tl", {.sources = {{1}, {2}}}), Error);
}

// ---- arcee_fusion ----

// 1-D: one KL factor k > 0 for the whole tensor, so importance = k·|Δ| with |Δ| =
// (1,2,3,4,5,6,7,20)·0.01. Sorted, n = 8: median = index 3 -> 0.04k, q1 = index 1 -> 0.02k,
// q3 = index 5 -> 0.06k; threshold 0.04k + 1.5·0.04k = 0.10k: only the 0.2 change survives.
TEST(MergekitExtraMethodsTest, ArceeFusionKeepsOutlierChanges) {
	const Vec base(8, 1.0f);
	const Vec model = {1.01f, 0.98f, 1.03f, 0.96f, 1.05f, 0.94f, 1.07f, 1.2f};
	expect_near(run("arcee_fusion", {.sources = {base, model}, .base_index = 0}), {1, 1, 1, 1, 1, 1, 1, 1.2f},
	            kTolerance);
	expect_near(run("arcee_fusion", {.sources = {model, base}, .base_index = 1}), {1, 1, 1, 1, 1, 1, 1, 1.2f},
	            kTolerance);
}

// 2x4. Row 0 shifts every value by 3: softmax unchanged, KL 0, importance 0 despite |Δ| = 3.
// Row 1 from (0,0,0,0) to (1,2,2.5,4): KL k > 0, importance k·(1,2,2.5,4). Sorted
// (0,0,0,0,k,2k,2.5k,4k): median index 3 -> 0, q1 index 1 -> 0, q3 index 5 -> 2k;
// threshold 3k: only the 4 is kept; row 0 stays the base.
TEST(MergekitExtraMethodsTest, ArceeFusionWeighsChangesByRowKl) {
	Case c{.sources = {{0, 1, 2, 3, 0, 0, 0, 0}, {3, 4, 5, 6, 1, 2, 2.5f, 4}}, .base_index = 0, .shape = {2, 4}};
	expect_near(run("arcee_fusion", c), {0, 1, 2, 3, 0, 0, 0, 4}, kTolerance);
	// No change at all: the base.
	expect_near(run("arcee_fusion", {.sources = {{1, 2, 3}, {1, 2, 3}}, .base_index = 1}), {1, 2, 3}, kTolerance);
}

TEST(MergekitExtraMethodsTest, ArceeFusionErrors) {
	EXPECT_THROW(run("arcee_fusion", {.sources = {{1}, {2}, {3}}, .base_index = 0}), Error);
	EXPECT_THROW(run("arcee_fusion", {.sources = {{1}, {2}}, .base_index = -1}), Error);
	EXPECT_THROW(run("arcee_fusion", {.sources = {{1, 2, 3}, {1, 2, 4}}, .base_index = 0, .shape = {2, 2}}), Error);
}

} // namespace
} // namespace weld
