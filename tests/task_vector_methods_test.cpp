// Unit tests of the task-vector group (della, della_linear, breadcrumbs, breadcrumbs_ties, sce,
// consensus_ta, consensus_ties). Expected values are worked out by hand in the comments; the
// random methods are checked by properties whose expected values are derived from the keep
// probabilities.
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

const std::vector<std::string> kMethods = {"della", "della_linear", "breadcrumbs",   "breadcrumbs_ties",
                                           "sce",   "consensus_ta", "consensus_ties"};

// ---- registry and parameters ----

TEST(TaskVectorMethodsTest, RegisteredWithMergekitDefaults) {
	for (const auto& name : kMethods) {
		ASSERT_NE(find_method(name), nullptr) << name;
		EXPECT_EQ(find_method(name)->info().base, BaseModel::Required) << name;
		EXPECT_FALSE(find_method(name)->info().reference.empty()) << name;
	}
	// mergekit's registry: della normalize+rescale, della_linear rescale, breadcrumbs neither.
	EXPECT_EQ(param("della", "normalize").default_value, 1);
	EXPECT_EQ(param("della", "rescale").default_value, 1);
	EXPECT_EQ(param("della_linear", "normalize").default_value, 0);
	EXPECT_EQ(param("della_linear", "rescale").default_value, 1);
	EXPECT_EQ(param("breadcrumbs", "normalize").default_value, 0);
	EXPECT_EQ(param("breadcrumbs_ties", "rescale").default_value, 0);
	EXPECT_EQ(param("della", "epsilon").default_value, 0.15);
	EXPECT_EQ(param("breadcrumbs", "gamma").default_value, 0.01);
	EXPECT_EQ(param("della", "lambda").default_value, 1);
	EXPECT_EQ(param("breadcrumbs_ties", "int8_mask").type, ParamType::Bool);
	EXPECT_TRUE(param("della", "weight").required);
	EXPECT_EQ(param("sce", "select_topk").default_value, 1.0);
	EXPECT_EQ(param("sce", "int8_mask").default_value, 0);
	EXPECT_EQ(param("consensus_ta", "k").default_value, 2);
	EXPECT_EQ(param("consensus_ties", "tall_lambda").default_value, 0.6);
	EXPECT_FALSE(param("consensus_ta", "weight").required);
	EXPECT_EQ(param("consensus_ta", "weight").default_value, 1);
	// density is a fraction in (0, 1] for every method that has one.
	for (const auto& name : {"della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "consensus_ties"}) {
		const ParamDef& d = param(name, "density");
		EXPECT_EQ(d.default_value, 1) << name;
		EXPECT_EQ(d.min_value, 0) << name;
		EXPECT_TRUE(d.min_exclusive) << name;
		EXPECT_EQ(d.max_value, 1) << name;
	}
	EXPECT_TRUE(param("sce", "select_topk").min_exclusive);
	EXPECT_FALSE(param("breadcrumbs", "gamma").min_exclusive);
	EXPECT_EQ(param("breadcrumbs", "gamma").max_value, 1);
}

TEST(TaskVectorMethodsTest, CommonInputErrors) {
	for (const auto& name : kMethods) {
		// No base among the sources.
		expect_error(name, {.sources = {{1, 2}, {3, 4}}, .base_index = -1, .source_params = {{{"weight", 1}}, {}}},
		             {"base"});
		// Sources of different lengths.
		expect_error(name, {.sources = {{1, 2}, {3, 4, 5}}, .base_index = 0, .source_params = {{}, {{"weight", 1}}}});
		// No sources at all.
		expect_error(name, {.sources = {}, .base_index = 0});
	}
	// weight is required by the mergekit methods (not by consensus merging, which defaults it).
	expect_error("della", {.sources = {{1, 2}, {3, 4}}, .base_index = 0, .source_params = {{}, {}}}, {"'weight'"});
	expect_error("breadcrumbs", {.sources = {{1, 2}, {3, 4}}, .base_index = 0, .source_params = {{}, {}}},
	             {"'weight'"});
	expect_near(run("consensus_ta",
	                {.sources = {{1, 2}, {3, 4}}, .base_index = 0, .params = {{"k", 1}}, .source_params = {{}, {}}}),
	            {3, 4});
}

// ---- DELLA ----

// base 1; deltas A = [2, -1, 1] (w 2), B = [-1, -1, -3] (w 1), C = [-0.5, 2, 1] (w 1).
Case three_models() {
	return {.sources = {{1, 1, 1}, {3, 0, 2}, {0, 0, -2}, {0.5f, 3, 2}},
	        .base_index = 0,
	        .source_params = {{}, {{"weight", 2}}, {{"weight", 1}}, {{"weight", 1}}}};
}

TEST(TaskVectorMethodsTest, DellaWithDensityOneIsTiesOrTaskArithmetic) {
	// Nothing is dropped at density 1 (mergekit returns the delta unchanged, before the epsilon
	// check, so epsilon 0.15 is fine). Weighted: A [4, -2, 2], B [-1, -1, -3], C [-0.5, 2, 1];
	// sums [2.5, -1, 0] -> signs [+, -, +].
	// della (sign election, normalize): e0 A: 4/2 = 2; e1 A, B: -3/3 = -1; e2 A, C: 3/3 = 1;
	// plus base 1: [3, 0, 2].
	expect_near(run("della", three_models()), {3, 0, 2});
	// della_linear (plain sum, no normalize): base + [2.5, -1, 0] = [3.5, 0, 1].
	expect_near(run("della_linear", three_models()), {3.5f, 0, 1});
	// lambda 2: base + 2 [2.5, -1, 0] = [6, -1, 1].
	Case c = three_models();
	c.params["lambda"] = 2;
	expect_near(run("della_linear", c), {6, -1, 1});
}

TEST(TaskVectorMethodsTest, DellaEpsilonMustKeepProbabilitiesInsideZeroOne) {
	const auto with = [](double density, double epsilon) {
		return Case{.sources = {{0, 0, 0}, {1, 2, 3}},
		            .base_index = 0,
		            .source_params = {{}, {{"weight", 1}, {"density", density}, {"epsilon", epsilon}}}};
	};
	// density - epsilon must be > 0 and density + epsilon < 1 (mergekit raises ValueError).
	for (const char* method : {"della", "della_linear"}) {
		expect_error(method, with(0.1, 0.15), {"epsilon", "density", "source 1"});
		expect_error(method, with(0.9, 0.15), {"epsilon"});
		expect_error(method, with(0.5, 0.5), {"epsilon"});
		EXPECT_NO_THROW(run(method, with(0.5, 0.49)));
		EXPECT_NO_THROW(run(method, with(0.3, 0)));
	}
}

// Rows of two elements [small, large] (the order alternating) with density 0.5 and epsilon
// 0.4999: the smaller one of each row survives with p = 0.5 - 0.4999 = 0.0001 and the larger
// with p = 0.9999. Over 1000 rows, about 0.1 small and 999.9 large survivors.
TEST(TaskVectorMethodsTest, DellaKeepProbabilityFollowsMagnitudeRankWithinRows) {
	const size_t rows = 1000;
	Vec base(2 * rows, 0.0f), model(2 * rows);
	for (size_t r = 0; r < rows; ++r) {
		model[2 * r + (r % 2)] = 0.25f;     // small
		model[2 * r + 1 - (r % 2)] = -2.0f; // large
	}
	Case c{.sources = {base, model},
	       .base_index = 0,
	       .params = {{"rescale", 0}},
	       .source_params = {{}, {{"weight", 1}, {"density", 0.5}, {"epsilon", 0.4999}}},
	       .shape = {rows, 2},
	       .seed = 7};
	const Vec out = run("della_linear", c);
	size_t small = 0, large = 0;
	for (size_t j = 0; j < out.size(); ++j) {
		// Without rescale a survivor keeps its value exactly.
		EXPECT_TRUE(out[j] == 0.0f || out[j] == model[j]) << j;
		small += out[j] == 0.25f;
		large += out[j] == -2.0f;
	}
	EXPECT_LE(small, 3u);
	EXPECT_GE(large, 997u);
}

// Ranks are per row: row 0 has tiny deltas, row 1 large ones. With density 0.5 and epsilon
// 0.3 each row keeps about half its elements (p runs 0.2 .. 0.8 within each row; standard
// deviation of a row's kept fraction sqrt(mean p(1-p) / 500) ~ 0.02). A tensor-wide ranking
// would keep ~35% of row 0 and ~65% of row 1.
TEST(TaskVectorMethodsTest, DellaRanksEachRowSeparately) {
	const size_t cols = 500;
	Vec base(2 * cols, 1.0f), model(2 * cols);
	for (size_t i = 0; i < cols; ++i) {
		model[i] = 1.0f + 0.001f * static_cast<float>(i + 1);
		model[cols + i] = 1.0f + static_cast<float>(i + 1);
	}
	Case c{.sources = {base, model},
	       .base_index = 0,
	       .params = {{"rescale", 0}},
	       .source_params = {{}, {{"weight", 1}, {"density", 0.5}, {"epsilon", 0.3}}},
	       .shape = {2, cols},
	       .seed = 11};
	const Vec out = run("della_linear", c);
	for (size_t row = 0; row < 2; ++row) {
		size_t kept = 0;
		for (size_t i = 0; i < cols; ++i)
			kept += out[row * cols + i] != 1.0f;
		EXPECT_NEAR(static_cast<double>(kept) / cols, 0.5, 0.08) << "row " << row;
	}
	// The largest-ranked fifth of row 1 (p from 0.68 to 0.8, mean 0.74) survives more often than the
	// smallest fifth (p from 0.2 to 0.32, mean 0.26): 100 elements each, sd ~ 0.044.
	size_t low = 0, high = 0;
	for (size_t i = 0; i < 100; ++i) {
		low += out[cols + i] != 1.0f;
		high += out[cols + cols - 1 - i] != 1.0f;
	}
	EXPECT_NEAR(low / 100.0, 0.26, 0.15);
	EXPECT_NEAR(high / 100.0, 0.74, 0.15);
}

TEST(TaskVectorMethodsTest, DellaRescalesToTheL1NormAndIsDeterministic) {
	const size_t n = 20000;
	Vec base(n), model(n);
	for (size_t i = 0; i < n; ++i) {
		base[i] = 0.01f * static_cast<float>(i % 5);
		model[i] = base[i] + std::sin(static_cast<float>(i)) + 0.1f;
	}
	Case c{.sources = {base, model},
	       .base_index = 0,
	       .source_params = {{}, {{"weight", 1}, {"density", 0.4}, {"epsilon", 0.1}}},
	       .shape = {200, 100},
	       .seed = 3};
	const Vec out = run("della_linear", c); // rescale defaults to true
	double l1_in = 0, l1_out = 0;
	size_t kept = 0;
	for (size_t i = 0; i < n; ++i) {
		l1_in += std::fabs(static_cast<double>(model[i]) - base[i]);
		l1_out += std::fabs(static_cast<double>(out[i]) - base[i]);
		kept += out[i] != base[i];
	}
	EXPECT_NEAR(l1_out / l1_in, 1.0, 1e-4);
	// Mean keep probability is density: 0.4 of 20000 (sd ~ 70).
	EXPECT_NEAR(static_cast<double>(kept) / n, 0.4, 0.02);
	EXPECT_EQ(run("della_linear", c), out);
	Case reseeded = c;
	reseeded.seed = 4;
	EXPECT_NE(run("della_linear", reseeded), out);
	Case renamed = c;
	renamed.tensor_name = "model.layers.1.mlp.up_proj.weight";
	EXPECT_NE(run("della_linear", renamed), out);
}

// ---- Model Breadcrumbs ----

// base 1; deltas [0.125, -5, 3, -2, 1, 0.5, -4, 2.5, 0.25, -1.5]. By magnitude, largest first:
// -5 (1), -4 (6), 3 (2), 2.5 (7), -2 (3), -1.5 (9), 1 (4), 0.5 (5), 0.25 (8), 0.125 (0).
Case breadcrumbs_case(double density, double gamma) {
	return {.sources = {Vec(10, 1.0f), {1.125f, -4, 4, -1, 2, 1.5f, -3, 3.5f, 1.25f, -0.5f}},
	        .base_index = 0,
	        .source_params = {{}, {{"weight", 1}, {"density", density}, {"gamma", gamma}}}};
}

TEST(TaskVectorMethodsTest, BreadcrumbsDropsOutliersThenSmallest) {
	// n = 10, density 0.5 -> keep int(5); gamma 0.1 -> drop int(1) largest (-5), then keep
	// -4, 3, 2.5, -2, -1.5. base + kept: [1, 1, 4, -1, 1, 1, -3, 3.5, 1, -0.5].
	expect_near(run("breadcrumbs", breadcrumbs_case(0.5, 0.1)), {1, 1, 4, -1, 1, 1, -3, 3.5f, 1, -0.5f});
	// rescale: L1 before = 0.125+5+3+2+1+0.5+4+2.5+0.25+1.5 = 19.875, after = 4+3+2.5+2+1.5 = 13;
	// factor 19.875/13 = 1.528846154: kept deltas 3 -> 4.586538, -2 -> -3.057692,
	// -4 -> -6.115385, 2.5 -> 3.822115, -1.5 -> -2.293269; plus base 1.
	Case c = breadcrumbs_case(0.5, 0.1);
	c.params["rescale"] = 1;
	expect_near(run("breadcrumbs", c), {1, 1, 5.586538f, -2.057692f, 1, 1, -5.115385f, 4.822115f, 1, -1.293269f});
}

TEST(TaskVectorMethodsTest, BreadcrumbsEdgeCounts) {
	// gamma 0.01: int(0.1) = 0 outliers. weld keeps the top int(5): -5, -4, 3, 2.5, -2
	// (mergekit's slice [n_bot:-0] would keep nothing; see docs).
	expect_near(run("breadcrumbs", breadcrumbs_case(0.5, 0.01)), {1, -4, 4, -1, 1, 1, -3, 3.5f, 1, 1});
	// density 0.9 (9 kept) + gamma 0.2 (2 dropped) > 10: mergekit drops only 10 - 9 = 1 outlier
	// (-5) and keeps the other nine.
	expect_near(run("breadcrumbs", breadcrumbs_case(0.9, 0.2)), {1.125f, 1, 4, -1, 2, 1.5f, -3, 3.5f, 1.25f, -0.5f});
	// density 1 returns the task vector unchanged, outliers included.
	expect_near(run("breadcrumbs", breadcrumbs_case(1, 0.2)), {1.125f, -4, 4, -1, 2, 1.5f, -3, 3.5f, 1.25f, -0.5f});
	// density 0.05: int(0.5) = 0 kept: nothing survives (as in mergekit), the output is the base.
	expect_near(run("breadcrumbs", breadcrumbs_case(0.05, 0.1)), Vec(10, 1.0f));
	// gamma 0, density 0.3: plain top-3 magnitude: -5, -4, 3.
	expect_near(run("breadcrumbs", breadcrumbs_case(0.3, 0)), {1, -4, 4, 1, 1, 1, -3, 1, 1, 1});
}

TEST(TaskVectorMethodsTest, BreadcrumbsTiesElectsSigns) {
	// base 0; A = [4, -1, 2, 3] (w 2), B = [-3, 2, -1, 0.5] (w 1); density 0.5 (keep 2),
	// gamma 0.25 (drop 1). A drops 4, keeps 3 and 2: [0, 0, 2, 3]. B drops -3, keeps 2 and -1:
	// [0, 2, -1, 0]. Weighted: A [0, 0, 4, 6], B [0, 2, -1, 0].
	Case c{.sources = {{0, 0, 0, 0}, {4, -1, 2, 3}, {-3, 2, -1, 0.5f}},
	       .base_index = 0,
	       .source_params = {{},
	                         {{"weight", 2}, {"density", 0.5}, {"gamma", 0.25}},
	                         {{"weight", 1}, {"density", 0.5}, {"gamma", 0.25}}}};
	// breadcrumbs: plain sum [0, 2, 3, 6].
	expect_near(run("breadcrumbs", c), {0, 2, 3, 6});
	// breadcrumbs_ties: sums [0, 2, 3, 6] all + (0 counts as +); e2 drops B's -1: [0, 2, 4, 6].
	expect_near(run("breadcrumbs_ties", c), {0, 2, 4, 6});
	// normalize: divisors e0 nothing -> 1, e1 B -> 1, e2 A -> 2, e3 A -> 2: [0, 2, 2, 3].
	c.params["normalize"] = 1;
	expect_near(run("breadcrumbs_ties", c), {0, 2, 2, 3});
}

// ---- SCE ----

TEST(TaskVectorMethodsTest, SceWeightsByMeanSquareAndElectsSigns) {
	// base 1; deltas A = [1, -2, 3], B = [2, 2, -1]. Mean squares: A 14/3, B 9/3; normalized
	// wA = 14/23, wB = 9/23. Unweighted sums [3, 0, 2]: all + (0 counts as +).
	// e0: both: (14*1 + 9*2)/23 / (23/23) = 32/23 = 1.3913043; e1: B only: 2; e2: A only: 3.
	Case c{.sources = {{1, 1, 1}, {2, -1, 4}, {3, 3, 0}}, .base_index = 0, .source_params = {{}, {}, {}}};
	expect_near(run("sce", c), {2.3913043f, 3, 4});
	// The base may be listed anywhere.
	Case moved{.sources = {{2, -1, 4}, {1, 1, 1}, {3, 3, 0}}, .base_index = 1};
	expect_near(run("sce", moved), {2.3913043f, 3, 4});
}

TEST(TaskVectorMethodsTest, SceSelectsTopVariancePositions) {
	// base 0; A = [1, -2, 3, 0], B = [2, 2, -1.5, 0]. Population variance over the two task
	// vectors ((a - b)/2)^2: [0.25, 4, 5.0625, 0]; 3 positions are nonzero.
	Case c{
	    .sources = {{0, 0, 0, 0}, {1, -2, 3, 0}, {2, 2, -1.5f, 0}}, .base_index = 0, .params = {{"select_topk", 0.5}}};
	// k = int(0.5 * 3) = 1: only position 2 survives: A 3, B -1.5; sum 1.5 -> +: A alone -> 3.
	expect_near(run("sce", c), {0, 0, 3, 0});
	// k = int(0.7 * 3) = 2: positions 2 and 1. e1: sum 0 -> +: B's 2 alone -> 2.
	c.params["select_topk"] = 0.7;
	expect_near(run("sce", c), {0, 2, 3, 0});
}

TEST(TaskVectorMethodsTest, SceEdgeCases) {
	// One task vector: select_topk 1 returns it (its weight cancels).
	Case one{.sources = {{1, 2}, {3, 5}}, .base_index = 0};
	expect_near(run("sce", one), {3, 5});
	// With select_topk < 1 its variance is 0 everywhere, so k = 0 and (as in mergekit) every
	// delta is dropped: the base.
	one.params["select_topk"] = 0.5;
	expect_near(run("sce", one), {1, 2});
	// Only the base: the base.
	expect_near(run("sce", Case{.sources = {{1, -2}}, .base_index = 0}), {1, -2});
	// Mean squares 1.6e-7 and 4e-8 sum below 1e-6, so mergekit uses equal weights:
	// (0.0004 + 0.0002) / 2 = 0.0003 (proportional weights would give 0.00036).
	Case tiny{.sources = {{0, 0}, {0.0004f, 0.0004f}, {0.0002f, 0.0002f}}, .base_index = 0};
	expect_near(run("sce", tiny), {0.0003f, 0.0003f}, 1e-8f);
}

// ---- consensus merging (TALL masks) ----

// base 1; deltas A = [1, 0, 2, 0.125], B = [1, 3, -2, 0], C = [0, 0, 0.5, -3].
// Task arithmetic: tau_MTL = [2, 3, 0.5, -2.875].
Case consensus_case() {
	return {.sources = {{1, 1, 1, 1}, {2, 1, 3, 1.125f}, {2, 4, -1, 1}, {1, 1, 1.5f, -2}},
	        .base_index = 0,
	        .source_params = {{}, {}, {}, {}}};
}

void set_tall_lambda(Case& c, double lambda) {
	for (size_t i = 1; i < c.source_params.size(); ++i)
		c.source_params[i]["tall_lambda"] = lambda;
}

TEST(TaskVectorMethodsTest, ConsensusTaKeepsEntriesEnoughTasksNeed) {
	// Defaults tall_lambda 0.6, k 2. m_t = |tau_t| > 0.6 |tau_MTL - tau_t|:
	// A: 1 > 0.6 y, 0 > 1.8 n, 2 > 0.9 y, 0.125 > 1.8 n -> [1, 0, 1, 0]
	// B: 1 > 0.6 y, 3 > 0 y, 2 > 1.5 y, 0 > 1.725 n      -> [1, 1, 1, 0]
	// C: 0 > 1.2 n, 0 > 1.8 n, 0.5 > 0 y, 3 > 0.075 y    -> [0, 0, 1, 1]
	// counts [2, 1, 3, 1] >= 2 -> keep e0, e2: base + [2, 0, 0.5, 0].
	Case c = consensus_case();
	expect_near(run("consensus_ta", c), {3, 1, 1.5f, 1});
	// lambda scales the kept entries: base + 2 [2, 0, 0.5, 0].
	c.params["lambda"] = 2;
	expect_near(run("consensus_ta", c), {5, 1, 2, 1});
	// k 1 keeps every entry some task needs (all four here); k 0 is plain task arithmetic.
	c.params = {{"k", 1}};
	expect_near(run("consensus_ta", c), {3, 4, 1.5f, -1.875f});
	c.params = {{"k", 0}};
	expect_near(run("consensus_ta", c), {3, 4, 1.5f, -1.875f});
	// k 4 > 3 tasks keeps nothing: the base.
	c.params = {{"k", 4}};
	expect_near(run("consensus_ta", c), {1, 1, 1, 1});
}

TEST(TaskVectorMethodsTest, ConsensusTaMaskIsStrictAndPerModel) {
	// tall_lambda 1: A: 1 > |2 - 1| = 1 is false (strict), 2 > 1.5 y -> [0, 0, 1, 0];
	// B: 1 > 1 n, 3 > 0 y, 2 > 2.5 n -> [0, 1, 0, 0]; C: 0.5 > 0 y, 3 > 0.125 y -> [0, 0, 1, 1].
	// counts [0, 1, 2, 1]: only e2 survives k = 2.
	Case c = consensus_case();
	set_tall_lambda(c, 1);
	expect_near(run("consensus_ta", c), {1, 1, 1.5f, 1});
	// A alone at 0.5: A [1, 0, 1, 0] (1 > 0.5), B and C as above: counts [1, 1, 2, 1] -> e2.
	c.source_params[1]["tall_lambda"] = 0.5;
	expect_near(run("consensus_ta", c), {1, 1, 1.5f, 1});
	// All at 0.5: A [1, 0, 1, 0], B [1, 1, 1, 0] (2 > 1.25), C [0, 0, 1, 1]: counts
	// [2, 1, 3, 1] -> e0, e2.
	set_tall_lambda(c, 0.5);
	expect_near(run("consensus_ta", c), {3, 1, 1.5f, 1});
}

TEST(TaskVectorMethodsTest, ConsensusTiesMasksTheTiesMerge) {
	// TIES at density 1, weights 1: sums [2, 3, 0.5, -2.875] -> signs [+, +, +, -];
	// sum of agreeing deltas: e0 A+B = 2, e1 B = 3, e2 A+C = 2.5, e3 C = -3 (normalize off).
	// tall_lambda 0.5 against tau_MTL = [2, 3, 2.5, -3]:
	// A: 1 > 0.5 y, 0 > 1.5 n, 2 > 0.25 y, 0.125 > 1.5625 n -> [1, 0, 1, 0]
	// B: 1 > 0.5 y, 3 > 0 y, 2 > 2.25 n, 0 > 1.5 n          -> [1, 1, 0, 0]
	// C: 0 > 1 n, 0 > 1.5 n, 0.5 > 1 n, 3 > 0 y             -> [0, 0, 0, 1]
	// counts [2, 1, 1, 1] -> only e0: base + [2, 0, 0, 0].
	Case c = consensus_case();
	set_tall_lambda(c, 0.5);
	expect_near(run("consensus_ties", c), {3, 1, 1, 1});
	// normalize: tau_MTL = [2/2, 3/1, 2.5/2, -3/1] = [1, 3, 1.25, -3]. tall_lambda 0.5:
	// A: 1 > 0 y, 0 > 1.5 n, 2 > 0.375 y, 0.125 > 1.5625 n -> [1, 0, 1, 0]
	// B: 1 > 0 y, 3 > 0 y, 2 > 1.625 y, 0 > 1.5 n          -> [1, 1, 1, 0]
	// C: 0 > 0.5 n, 0 > 1.5 n, 0.5 > 0.375 y, 3 > 0 y      -> [0, 0, 1, 1]
	// counts [2, 1, 3, 1] -> e0, e2: base + [1, 0, 1.25, 0].
	c.params["normalize"] = 1;
	expect_near(run("consensus_ties", c), {2, 1, 2.25f, 1});
}

TEST(TaskVectorMethodsTest, ConsensusTiesPrunesByDensityFirst) {
	// A density 0.5 keeps int(2) of [1, 0, 2, 0.125]: 2 and 1 -> unchanged where it matters.
	// B density 0.25 keeps int(1): 3 -> [0, 3, 0, 0]. C (density 1) [0, 0, 0.5, -3].
	// Sums [1, 3, 2.5, -3] (A's 0.125 is pruned): tau_MTL = [1, 3, 2.5, -3] (normalize off).
	// tall_lambda 0.5 with the raw task vectors (pruning does not change the masks' inputs):
	// A: 1 > 0 y, 0 > 1.5 n, 2 > 0.25 y, 0.125 > 1.5625 n -> [1, 0, 1, 0]
	// B: 1 > 0 y, 3 > 0 y, 2 > 2.25 n, 0 > 1.5 n          -> [1, 1, 0, 0]
	// C: 0 > 0.5 n, 0 > 1.5 n, 0.5 > 1 n, 3 > 0 y         -> [0, 0, 0, 1]
	// counts [2, 1, 1, 1] -> e0: base + [1, 0, 0, 0].
	Case c = consensus_case();
	set_tall_lambda(c, 0.5);
	c.source_params[1]["density"] = 0.5;
	c.source_params[2]["density"] = 0.25;
	expect_near(run("consensus_ties", c), {2, 1, 1, 1});
}

} // namespace
} // namespace weld
