// Expected values here are worked out by hand (see the comments), never by calling the code
// under test a second way.
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

// The hand-derived values here hold to 1e-6.
constexpr float kTolerance = 1e-6f;

// ---- registry ----

// Every method the project promises (mergekit's and the data-free ones of the literature),
// each once, sorted by name.
TEST(MethodsTest, RegistryListsEveryMethodSorted) {
	std::vector<std::string> names;
	for (const MergeMethod* m : all_methods())
		names.push_back(m->info().name);
	EXPECT_EQ(names, (std::vector<std::string>{"adamerging",   "arcee_fusion",
	                                           "breadcrumbs",  "breadcrumbs_ties",
	                                           "cabs",         "concrete",
	                                           "consensus_ta", "consensus_ties",
	                                           "core_space",   "dam",
	                                           "dare_linear",  "dare_ties",
	                                           "della",        "della_linear",
	                                           "doge",         "expert_merging",
	                                           "ffg",          "fisher",
	                                           "fw_merging",   "karcher",
	                                           "linear",       "localize_stitch",
	                                           "lrp",          "model_stock",
	                                           "multislerp",   "mwa",
	                                           "nearswap",     "nuslerp",
	                                           "opcm",         "ota",
	                                           "passthrough",  "pcb",
	                                           "ram",          "ramplus_tl",
	                                           "rcp",          "regmean",
	                                           "regmean_pp",   "sce",
	                                           "slerp",        "task_arithmetic",
	                                           "ties",         "tsv",
	                                           "twin",         "varm",
	                                           "widen",        "zipit"}));
	for (const MergeMethod* m : all_methods()) {
		EXPECT_FALSE(m->info().description.empty()) << m->info().name;
		EXPECT_FALSE(m->info().reference.empty()) << m->info().name;
	}
	EXPECT_EQ(find_method("ties")->info().name, "ties");
	EXPECT_EQ(find_method("nope"), nullptr);
	EXPECT_EQ(find_method(""), nullptr);
}

TEST(MethodsTest, InfoMatchesMergekitDefaults) {
	const auto global = [](std::string_view method, std::string_view param) {
		for (const ParamDef& p : find_method(method)->info().global_params)
			if (p.name == param) return p;
		ADD_FAILURE() << method << " lacks " << param;
		return ParamDef{};
	};
	EXPECT_EQ(global("linear", "normalize").default_value, 1);
	EXPECT_EQ(global("task_arithmetic", "normalize").default_value, 0);
	EXPECT_EQ(global("ties", "normalize").default_value, 1);
	EXPECT_EQ(global("ties", "rescale").default_value, 0);
	EXPECT_EQ(global("dare_linear", "rescale").default_value, 1);
	EXPECT_EQ(global("dare_ties", "normalize").default_value, 0);
	EXPECT_EQ(global("dare_ties", "lambda").default_value, 1);
	EXPECT_EQ(global("ties", "int8_mask").type, ParamType::Bool);
	EXPECT_TRUE(global("slerp", "t").required);
	EXPECT_EQ(find_method("ties")->info().base, BaseModel::Required);
	EXPECT_EQ(find_method("linear")->info().base, BaseModel::Ignored);
	const MethodInfo& pass = find_method("passthrough")->info();
	EXPECT_TRUE(pass.copy_only);
	ASSERT_EQ(pass.model_params.size(), 1u);
	EXPECT_FALSE(pass.model_params[0].has_default);
	EXPECT_EQ(find_method("slerp")->info().max_sources, 2u);
	for (const MergeMethod* m : all_methods()) {
		EXPECT_FALSE(m->info().description.empty()) << m->info().name;
		EXPECT_FALSE(m->info().reference.empty()) << m->info().name;
	}
}

// ---- linear ----

TEST(MethodsTest, LinearNormalizeOnAndOff) {
	// a = [1, 2, 3] weight 1, b = [3, 6, -3] weight 3: 1a + 3b = [10, 20, -6]; / 4 = [2.5, 5, -1.5].
	Case c{.sources = {{1, 2, 3}, {3, 6, -3}}, .source_params = {weight(1), weight(3)}};
	expect_near(run("linear", c), {2.5f, 5.0f, -1.5f}, kTolerance);
	c.params["normalize"] = 0;
	expect_near(run("linear", c), {10.0f, 20.0f, -6.0f}, kTolerance);
	// The base index does not matter: every listed source is averaged.
	c.params["normalize"] = 1;
	c.base_index = 1;
	expect_near(run("linear", c), {2.5f, 5.0f, -1.5f}, kTolerance);
}

TEST(MethodsTest, LinearErrors) {
	Case missing{.sources = {{1, 2}, {3, 4}}, .source_params = {weight(1), {}}};
	expect_error("linear", missing, {"'weight'"});
	Case zero_sum{.sources = {{1, 2}, {3, 4}}, .source_params = {weight(1), weight(-1)}};
	EXPECT_THROW(run("linear", zero_sum), Error);
}

// ---- task arithmetic ----

// base = [1, 1, 1, 1]; a = [2, 0, 1, 3] (delta [1, -1, 0, 2], weight 0.5);
// b = [1, 3, -1, 1] (delta [0, 2, -2, 0], weight 1).
// mixed = 0.5*[1, -1, 0, 2] + [0, 2, -2, 0] = [0.5, 1.5, -2, 1].
Case ta_case() {
	return {.sources = {{1, 1, 1, 1}, {2, 0, 1, 3}, {1, 3, -1, 1}},
	        .base_index = 0,
	        .source_params = {{}, weight(0.5), weight(1)}};
}

TEST(MethodsTest, TaskArithmeticSumsWeightedDeltas) {
	Case c = ta_case();
	// base + mixed = [1.5, 2.5, -1, 2].
	expect_near(run("task_arithmetic", c), {1.5f, 2.5f, -1.0f, 2.0f}, kTolerance);
	// lambda 2: base + 2*mixed = [2, 4, -3, 3].
	c.params["lambda"] = 2;
	expect_near(run("task_arithmetic", c), {2.0f, 4.0f, -3.0f, 3.0f}, kTolerance);
	// normalize: mixed / 1.5 = [1/3, 1, -4/3, 2/3]; lambda 2 doubles that: base + [2/3, 2, -8/3, 4/3].
	c.params["normalize"] = 1;
	expect_near(run("task_arithmetic", c), {5.0f / 3, 3.0f, -5.0f / 3, 7.0f / 3}, kTolerance);
}

TEST(MethodsTest, TaskArithmeticBaseAnywhereAndAlone) {
	// Same as above with the base listed second.
	Case c{.sources = {{2, 0, 1, 3}, {1, 1, 1, 1}, {1, 3, -1, 1}},
	       .base_index = 1,
	       .source_params = {weight(0.5), {}, weight(1)}};
	expect_near(run("task_arithmetic", c), {1.5f, 2.5f, -1.0f, 2.0f}, kTolerance);
	// Only the base: the output is the base.
	Case alone{.sources = {{1, -2, 3}}, .base_index = 0, .source_params = {{}}};
	expect_near(run("task_arithmetic", alone), {1, -2, 3}, kTolerance);
	expect_near(run("ties", alone), {1, -2, 3}, kTolerance);
}

TEST(MethodsTest, TaskArithmeticZeroWeightSumDividesByOne) {
	// weights 1 and -1 sum to 0, so normalize divides by 1: mixed = [1, -1, 0, 2] - [0, 2, -2, 0]
	// = [1, -3, 2, 2]; base + mixed = [2, -2, 3, 3].
	Case c = ta_case();
	c.source_params = {{}, weight(1), weight(-1)};
	c.params["normalize"] = 1;
	expect_near(run("task_arithmetic", c), {2.0f, -2.0f, 3.0f, 3.0f}, kTolerance);
}

// ---- TIES ----

TEST(MethodsTest, TiesPrunesByMagnitudeAndElectsSigns) {
	// base 0; A = [1, -2, 3, 0.5], B = [-1, -1, 4, 0]; density 0.5 keeps k = floor(0.5*4) = 2 each.
	// A keeps |3| and |-2|: [0, -2, 3, 0]. B keeps |4|, then |-1| and |-1| tie and the lower index
	// wins: [-1, 0, 4, 0]. Sums [-1, -2, 7, 0] give majority signs [-, -, +, + (0 counts as +)].
	// Elected: e0 B only -> -1 / 1; e1 A only -> -2 / 1; e2 both -> 7 / 2; e3 nothing -> 0 / 1.
	Case c{.sources = {{0, 0, 0, 0}, {1, -2, 3, 0.5f}, {-1, -1, 4, 0}},
	       .base_index = 0,
	       .source_params = {{}, weight_density(1, 0.5), weight_density(1, 0.5)}};
	expect_near(run("ties", c), {-1.0f, -2.0f, 3.5f, 0.0f}, kTolerance);
	c.params["normalize"] = 0;
	expect_near(run("ties", c), {-1.0f, -2.0f, 7.0f, 0.0f}, kTolerance);
}

TEST(MethodsTest, TiesSignElectionWithWeights) {
	// base 1; deltas A = [2, -1, 1] (w 2), B = [-1, -1, -3] (w 1), C = [-0.5, 2, 1] (w 1); density 1.
	// Weighted: A [4, -2, 2], B [-1, -1, -3], C [-0.5, 2, 1]; sums [2.5, -1, 0] -> signs [+, -, +].
	// e0: A -> 4 / 2 = 2; e1: A, B -> -3 / 3 = -1; e2: A, C -> 3 / 3 = 1. Plus base 1: [3, 0, 2].
	Case c{.sources = {{1, 1, 1}, {3, 0, 2}, {0, 0, -2}, {0.5f, 3, 2}},
	       .base_index = 0,
	       .source_params = {{}, weight(2), weight(1), weight(1)}};
	expect_near(run("ties", c), {3.0f, 0.0f, 2.0f}, kTolerance);
	// Without normalize: base + [4, -3, 3] = [5, -2, 4]. dare_ties with density 1 is the same
	// (its normalize defaults to false; rescale changes nothing when nothing is dropped).
	c.params["normalize"] = 0;
	expect_near(run("ties", c), {5.0f, -2.0f, 4.0f}, kTolerance);
	c.params.clear();
	expect_near(run("dare_ties", c), {5.0f, -2.0f, 4.0f}, kTolerance);
}

TEST(MethodsTest, TiesUsesSignOfWeightedDelta) {
	// base 0; A = [1, 1] (w 1), B = [1, -1] (w -2). Weighted: A [1, 1], B [-2, 2]; sums [-1, 3].
	// e0: sign -, only B elected: -2 / -2 = 1. e1: sign +, both: 3 / (1 - 2) = -3.
	// (Electing on the unweighted delta would give e0 = 0.)
	Case c{.sources = {{0, 0}, {1, 1}, {1, -1}}, .base_index = 0, .source_params = {{}, weight(1), weight(-2)}};
	expect_near(run("ties", c), {1.0f, -3.0f}, kTolerance);
}

TEST(MethodsTest, TiesZeroElectedWeightDividesByOne) {
	// base 0; A = [1] (w 1) -> weighted 1; B = [-1] (w -1) -> weighted 1. Both elected (+),
	// divisor 1 + -1 = 0 -> 1, so the result is the sum 2.
	Case c{.sources = {{0}, {1}, {-1}}, .base_index = 0, .source_params = {{}, weight(1), weight(-1)}};
	expect_near(run("ties", c), {2.0f}, kTolerance);
}

TEST(MethodsTest, TiesDensityTooLowIsAnError) {
	// floor(0.1 * 4) = 0 elements kept.
	Case c{.sources = {{0, 0, 0, 0}, {1, 2, 3, 4}}, .base_index = 0, .source_params = {{}, weight_density(1, 0.1)}};
	expect_error("ties", c, {"density", "source 1"});
}

// ---- DARE ----

TEST(MethodsTest, DareLinearWithDensityOneIsTaskArithmetic) {
	Case c = ta_case();
	expect_near(run("dare_linear", c), {1.5f, 2.5f, -1.0f, 2.0f}, kTolerance);
	c.params["lambda"] = 2;
	expect_near(run("dare_linear", c), {2.0f, 4.0f, -3.0f, 3.0f}, kTolerance);
}

Case dare_case(size_t n, double density, bool rescale) {
	Vec base(n), model(n);
	for (size_t i = 0; i < n; ++i) {
		base[i] = 0.01f * static_cast<float>(i % 7);
		model[i] = base[i] + std::sin(static_cast<float>(i)) + 0.5f;
	}
	return {.sources = {base, model},
	        .base_index = 0,
	        .params = {{"rescale", rescale ? 1.0 : 0.0}},
	        .source_params = {{}, weight_density(1, density)},
	        .tensor_name = "model.layers.0.self_attn.q_proj.weight",
	        .seed = 1234};
}

TEST(MethodsTest, DareIsDeterministicPerSeedAndTensor) {
	Case c = dare_case(1000, 0.5, true);
	const Vec first = run("dare_linear", c);
	EXPECT_EQ(run("dare_linear", c), first);
	Case renamed = c;
	renamed.tensor_name = "model.layers.1.self_attn.q_proj.weight";
	EXPECT_NE(run("dare_linear", renamed), first);
	Case reseeded = c;
	reseeded.seed = 1235;
	EXPECT_NE(run("dare_linear", reseeded), first);
}

TEST(MethodsTest, DareKeepsDensityFractionAndRescalesL1) {
	const size_t n = 100000;
	for (bool rescale : {false, true}) {
		Case c = dare_case(n, 0.3, rescale);
		const Vec out = run("dare_linear", c);
		size_t kept = 0;
		double l1_in = 0, l1_out = 0;
		for (size_t i = 0; i < n; ++i) {
			const double delta_in = static_cast<double>(c.sources[1][i]) - c.sources[0][i];
			const double delta_out = static_cast<double>(out[i]) - c.sources[0][i];
			l1_in += std::fabs(delta_in);
			l1_out += std::fabs(delta_out);
			if (std::fabs(delta_out) > 1e-6) {
				++kept;
				// A kept delta is the original, times 1/keep-fraction when rescaling.
				if (!rescale) {
					EXPECT_NEAR(delta_out, delta_in, 1e-5);
				}
			}
		}
		// Binomial standard deviation of the kept fraction: sqrt(0.3*0.7/1e5) ~ 0.0015.
		EXPECT_NEAR(static_cast<double>(kept) / n, 0.3, 0.01);
		if (rescale) {
			EXPECT_NEAR(l1_out / l1_in, 1.0, 1e-4);
		} else {
			EXPECT_NEAR(l1_out / l1_in, 0.3, 0.02);
		}
	}
}

// ---- SLERP ----

TEST(MethodsTest, SlerpEndpoints) {
	Case c{.sources = {{1, 2, 0}, {0, 1, 3}}, .base_index = 0, .params = {{"t", 0}}};
	expect_near(run("slerp", c), {1, 2, 0}, kTolerance);
	c.params["t"] = 1;
	expect_near(run("slerp", c), {0, 1, 3}, kTolerance);
	// The base may come second: t = 0 still gives the base.
	c.sources = {{0, 1, 3}, {1, 2, 0}};
	c.base_index = 1;
	c.params["t"] = 0;
	expect_near(run("slerp", c), {1, 2, 0}, kTolerance);
}

TEST(MethodsTest, SlerpOrthogonalAndFortyFiveDegrees) {
	// [1, 0, 0] and [0, 2, 0] are orthogonal: theta = pi/2, t = 0.5 gives
	// s0 = s1 = sin(pi/4) / sin(pi/2) = 0.70710678, out = [0.70710678, 1.41421356, 0].
	Case c{.sources = {{1, 0, 0}, {0, 2, 0}}, .base_index = 0, .params = {{"t", 0.5}}};
	expect_near(run("slerp", c), {0.70710678f, 1.41421356f, 0.0f}, kTolerance);
	// [1, 0] and [1, 1]: cos theta = 1/sqrt(2), theta = pi/4; t = 0.5:
	// s0 = s1 = sin(pi/8) / sin(pi/4) = 0.38268343 / 0.70710678 = 0.54119610;
	// out = [s0 + s1, s1] = [1.08239220, 0.54119610].
	c = {.sources = {{1, 0}, {1, 1}}, .base_index = 0, .params = {{"t", 0.5}}};
	expect_near(run("slerp", c), {1.0823922f, 0.5411961f}, kTolerance);
}

TEST(MethodsTest, SlerpNearlyParallelFallsBackToLerp) {
	// cos theta > 0.9995: lerp with t = 0.25: 0.75*[1, 2, 3] + 0.25*[1.001, 2, 3] = [1.00025, 2, 3].
	Case c{.sources = {{1, 2, 3}, {1.001f, 2, 3}}, .base_index = 0, .params = {{"t", 0.25}}};
	expect_near(run("slerp", c), {1.00025f, 2.0f, 3.0f}, kTolerance);
	// Opposite vectors (cos theta = -1) also lerp: 0.75*[1, 1] + 0.25*[-1, -1] = [0.5, 0.5].
	c = {.sources = {{1, 1}, {-1, -1}}, .base_index = 0, .params = {{"t", 0.25}}};
	expect_near(run("slerp", c), {0.5f, 0.5f}, kTolerance);
}

TEST(MethodsTest, SlerpErrors) {
	Case missing_t{.sources = {{1, 0}, {0, 1}}, .base_index = 0};
	EXPECT_THROW(run("slerp", missing_t), Error);
	Case three{.sources = {{1}, {2}, {3}}, .base_index = 0, .params = {{"t", 0.5}}};
	EXPECT_THROW(run("slerp", three), Error);
	Case no_base{.sources = {{1}, {2}}, .base_index = -1, .params = {{"t", 0.5}}};
	EXPECT_THROW(run("slerp", no_base), Error);
}

// ---- passthrough ----

TEST(MethodsTest, PassthroughCopiesAndScales) {
	Case c{.sources = {{1, -2, 0.5f}}, .source_params = {{}}};
	expect_near(run("passthrough", c), {1, -2, 0.5f}, kTolerance);
	c.source_params = {{{"scale", 2}}};
	expect_near(run("passthrough", c), {2, -4, 1}, kTolerance);
	c.source_params = {{{"scale", 0}}};
	expect_near(run("passthrough", c), {0, 0, 0}, kTolerance);
	Case two{.sources = {{1}, {2}}, .source_params = {{}, {}}};
	EXPECT_THROW(run("passthrough", two), Error);
}

// ---- input checks shared by all methods ----

TEST(MethodsTest, InputErrorsNameTheTensor) {
	for (const MergeMethod* m : all_methods())
		expect_error(m->info().name, Case{.base_index = 0, .params = {{"t", 0.5}}});
	Case uneven{.sources = {{0, 0}, {1, 2, 3}}, .base_index = 0, .source_params = {{}, weight(1)}};
	expect_error("ties", uneven);
	expect_error("linear", uneven);
	Case bad_base{.sources = {{0, 0}, {1, 2}}, .base_index = 2, .source_params = {{}, weight(1)}};
	expect_error("task_arithmetic", bad_base);
	Case no_weight{.sources = {{0, 0}, {1, 2}}, .base_index = 0, .source_params = {{}, {}}};
	expect_error("dare_ties", no_weight);
	// The base needs no weight; short source_params (fewer entries than sources) are tolerated
	// for defaulted parameters only.
	Case short_params{.sources = {{0, 0}, {1, 2}}, .base_index = 0, .source_params = {}};
	expect_error("ties", short_params);
}

} // namespace
} // namespace weld
