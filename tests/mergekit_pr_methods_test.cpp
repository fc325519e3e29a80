// Unit tests of the methods of mergekit's open pull requests (cabs #568, core_space #646, lrp
// #677) on tiny tensors. cabs and lrp values are worked out by hand (see the comments);
// core_space is checked against tests/core_space_reference.py, mergekit's steps in NumPy.
#include "method_case.h"
#include "methods/method.h"
#include "methods/methods.h"
#include "methods/row_panel_methods.h"
#include "nn_test_util.h"
#include "util/error.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

namespace weld {
namespace {

using namespace test;

constexpr float kTolerance = 1e-6f;

TEST(MergekitPrMethodsTest, RegisteredWithMergekitNamesAndDefaults) {
	EXPECT_EQ(param("lrp", "density").default_value, 0.7);
	EXPECT_EQ(param("lrp", "weight").default_value, 1.0);
	EXPECT_EQ(find_method("lrp")->info().base, BaseModel::Optional);
	EXPECT_EQ(param("core_space", "weight").default_value, 1.0);
	EXPECT_TRUE(find_method("core_space")->info().model_params.empty()); // weight is global in mergekit
	EXPECT_EQ(param("cabs", "weight").default_value, 1.0);
	EXPECT_FALSE(param("cabs", "n_val").has_default);
	EXPECT_FALSE(param("cabs", "default_m_val").has_default);
	EXPECT_EQ(param("cabs", "pruning_order").type, ParamType::Text);
	EXPECT_EQ(find_method("cabs")->info().base, BaseModel::Required);
}

// ---- cabs ----

// Base 1s; ΔA = (4,-1,3,.5 | -2,5,0,1) w 1, ΔB = (9,2,-7,1 | 3,3,-4,0) w .5, 2:4.
// A first: blocks keep {4,3} and {5,-2}: positions 0,2,5,4 taken.
// B's candidate (0,2,0,1 | 0,0,-4,0) keeps {2,1} and {-4, then a zero: position 4, lowest}.
// Out = 1 + (4, .5·2, 3, .5·1, -2, 5, .5·(-4), 0).
TEST(MergekitPrMethodsTest, CabsTakesModelsInTurnOnFreePositions) {
	const Vec base(8, 1.0f);
	Case c{.sources = {base, {5, 0, 4, 1.5, -1, 6, 1, 2}, {10, 3, -6, 2, 4, 4, -3, 1}}, .base_index = 0};
	c.source_params = {{}, {{"weight", 1}, {"n_val", 2}, {"m_val", 4}}, {{"weight", 0.5}, {"n_val", 2}, {"m_val", 4}}};
	expect_near(run("cabs", c), {5, 2, 4, 1.5, -1, 6, -1, 1}, kTolerance);
	// B first: keeps {9,-7} and {-4, 3 (positions 4 and 5 tie: 4)}; A's candidate
	// (0,-1,0,.5 | 0,5,0,1) keeps {-1,.5} and {5,1}.
	c.source_params[1]["pruning_order"] = 1;
	c.source_params[2]["pruning_order"] = 0;
	expect_near(run("cabs", c), {5.5, 0, -2.5, 1.5, 2.5, 6, -1, 2}, kTolerance);
	// A model the order leaves out (-1) takes no part.
	c.source_params[1]["pruning_order"] = -1;
	expect_near(run("cabs", c), {5.5, 1, -2.5, 1, 2.5, 1, -1, 1}, kTolerance);
}

// A keeps 5 and, for its second place, the zero at position 1 (ties: lowest index), which
// closes position 1 to B: B's 7 there is lost and B keeps 2 and 1 instead (mergekit's topk mask).
TEST(MergekitPrMethodsTest, CabsKeptZerosCloseTheirPositions) {
	Case c{.sources = {Vec(4, 0.0f), {5, 0, 0, 0}, {0, 7, 1, 2}}, .base_index = 0};
	c.params = {{"default_n_val", 2}, {"default_m_val", 4}};
	expect_near(run("cabs", c), {5, 0, 1, 2}, kTolerance);
}

// Without n and m anywhere mergekit falls back to 1:4; a short last block keeps its top n.
TEST(MergekitPrMethodsTest, CabsFallsBackToOneOfFourAndHandlesAShortBlock) {
	Case c{.sources = {Vec(6, 0.0f), {1, -3, 2, 0, 5, -6}}, .base_index = 0};
	expect_near(run("cabs", c), {0, -3, 0, 0, 0, -6}, kTolerance);
	c.source_params = {{}, {{"n_val", 2}, {"m_val", 4}}};
	expect_near(run("cabs", c), {0, -3, 2, 0, 5, -6}, kTolerance);
	c.source_params = {{}, {{"n_val", 0}, {"m_val", 4}}};
	expect_near(run("cabs", c), Vec(6, 0.0f), kTolerance);
}

TEST(MergekitPrMethodsTest, CabsRejectsBadNm) {
	Case c{.sources = {Vec(4, 0.0f), {1, 2, 3, 4}}, .base_index = 0};
	c.source_params = {{}, {{"n_val", 5}, {"m_val", 4}}};
	expect_error("cabs", c, {"n_val/m_val", "5:4"});
	c.source_params = {{}, {{"n_val", 1.5}, {"m_val", 4}}};
	expect_error("cabs", c, {"whole numbers"});
	c.source_params = {{}, {{"n_val", 2}}};
	expect_error("cabs", c, {"n_val and m_val together"});
	c.source_params = {};
	c.params = {{"default_n_val", 2}};
	expect_error("cabs", c, {"default_n_val and default_m_val together"});
}

// ---- lrp ----

// B = 1s; ΔA = (3,-1,.5,-4,2) w 1, ΔB = (1,2,-3,0,.25) w 3, density .4: k = int(2.0) = 2.
// A keeps (3,0,0,-4,0), B keeps (0,2,-3,0,0); out = 1 + .25·A + .75·B.
TEST(MergekitPrMethodsTest, LrpKeepsTopDensityByMagnitudeAndAveragesByWeight) {
	Case c{.sources = {Vec(5, 1.0f), {4, 0, 1.5, -3, 3}, {2, 3, -2, 1, 1.25}}, .base_index = 0};
	c.params = {{"density", 0.4}};
	c.source_params = {{}, {{"weight", 1}}, {{"weight", 3}}};
	expect_near(run("lrp", c), {1.75, 2.5, -1.25, 0, 1}, kTolerance);
	// density .1: int(.5) = 0, raised to 1: A keeps -4, B keeps -3.
	c.params = {{"density", 0.1}};
	expect_near(run("lrp", c), {1, 1, -1.25, 0, 1}, kTolerance);
	// density 0 keeps nothing; density 1 is the weighted mean of the task vectors.
	c.params = {{"density", 0}};
	expect_near(run("lrp", c), Vec(5, 1.0f), kTolerance);
	c.params = {{"density", 1}};
	expect_near(run("lrp", c), {1 + .75f + .75f, 1 - .25f + 1.5f, 1 + .125f - 2.25f, 0, 1 + .5f + .1875f}, kTolerance);
}

// Relevance (by value, not magnitude) picks the entries; a model without any keeps by |Δ|.
TEST(MergekitPrMethodsTest, LrpUsesRelevanceWhereGiven) {
	const Vec relevance = {5, 0, 1, 9, -20};
	Case c{.sources = {Vec(5, 1.0f), {4, 0, 1.5, -3, 3}, {2, 3, -2, 1, 1.25}}, .base_index = 0};
	c.params = {{"density", 0.4}};
	MergeInput input;
	input.tensor_name = c.tensor_name;
	input.shape = {5};
	for (const Vec& s : c.sources)
		input.sources.emplace_back(s);
	input.base_index = 0;
	input.params = c.params;
	input.source_params = {{}, {{"weight", 1}}, {{"weight", 1}}};
	input.statistics = {{}, {}, relevance};
	Vec out(5);
	find_method("lrp")->merge(input, out);
	// A keeps (3,0,0,-4,0) by magnitude; B keeps positions 3 (9) and 0 (5): (1,0,0,0,0).
	expect_near(out, {1 + 2.0f, 1, 1, 1 - 2.0f, 1}, kTolerance);
}

TEST(MergekitPrMethodsTest, LrpWithoutBaseMergesOntoZerosAndRejectsZeroWeights) {
	Case c{.sources = {{2, -1}, {4, 3}}};
	c.params = {{"density", 0.5}};
	expect_near(run("lrp", c), {3, 0}, kTolerance); // k = 1: (2,0) and (4,0), halved
	c.source_params = {{{"weight", 1}}, {{"weight", -1}}};
	expect_error("lrp", c, {"sum to 0"});
}

// ---- core_space ----

Vec wave(size_t n, double phase) {
	Vec v(n);
	for (size_t j = 0; j < n; ++j)
		v[j] = static_cast<float>(std::sin(1.3 * static_cast<double>(j) + phase) + 0.1 * std::cos(0.7 * j * phase));
	return v;
}

Vec reference_core_space(const Case& c, double weight) {
	const nlohmann::json args = {
	    {"sources", c.sources}, {"base", c.base_index < 0 ? 0 : c.base_index}, {"shape", c.shape}, {"weight", weight}};
	const TempDir dir;
	const auto file = dir / "case.json";
	std::ofstream(file) << args.dump();
	const std::string command =
	    "/usr/bin/python3 " + std::string(WELD_SOURCE_DIR) + "/tests/core_space_reference.py @" + file.string();
	return nlohmann::json::parse(test::command_output(command)).get<Vec>();
}

class CoreSpaceTest : public ::testing::Test {
protected:
	void SetUp() override {
		if (!have_numpy()) GTEST_SKIP() << "needs /usr/bin/python3 with NumPy (python3-numpy)";
	}
};

// 8×6, two models: r = max(1, min(16, 6/4)) = 1; bases 8×2 and 6×2 hold every factor.
TEST_F(CoreSpaceTest, TwoModelsMatchNumPy) {
	Case c{.sources = {wave(48, 0.0), wave(48, 0.4), wave(48, 1.1)}, .base_index = 0, .shape = {8, 6}};
	c.params = {{"weight", 0.8}};
	expect_near(run("core_space", c), reference_core_space(c, 0.8), 1e-5f);
}

// 8×4, five models of rank 1: U_B is 8×5 but V_A only 4×4, so U_B is cut to 4 columns and the
// merge loses the direction of smallest singular value (not the plain mean of the rank-1 parts).
TEST_F(CoreSpaceTest, CommonWidthCutMatchesNumPy) {
	Case c{.sources = {wave(32, 0.0)}, .base_index = 0, .shape = {8, 4}};
	for (int m = 1; m <= 5; ++m)
		c.sources.push_back(wave(32, 0.5 * m));
	const Vec out = run("core_space", c);
	expect_near(out, reference_core_space(c, 1.0), 1e-5f);
}

// 16×12 (r = 3), three models, no base: the first model serves as base, as in mergekit.
TEST_F(CoreSpaceTest, NoBaseUsesTheFirstModel) {
	Case c{.sources = {wave(192, 0.2), wave(192, 0.9), wave(192, 1.7)}, .shape = {16, 12}};
	expect_near(run("core_space", c), reference_core_space(c, 1.0), 1e-5f);
}

// 3000 × 16 (r = 4), base + 3, weight 0.7: N·r = 12 <= 16, so the merge is the mean of the rank-4
// task vectors, from Gram matrices, on the whole tensor and streamed (panels of 7 rows or one);
// read as 16 × 3000 it is merged as its transpose.
TEST_F(CoreSpaceTest, GramFormWholeStreamedAndWideMatchNumPy) {
	Case c{.sources = {wave(48000, 0.0)}, .base_index = 0, .shape = {3000, 16}};
	for (int m = 1; m <= 3; ++m) {
		Vec model = wave(48000, 0.37 * m);
		for (size_t i = 0; i < model.size(); ++i)
			model[i] += 0.3f * static_cast<float>(std::cos(0.011 * static_cast<double>(i * (m + 2)) + m));
		c.sources.push_back(std::move(model));
	}
	c.params = {{"weight", 0.7}};
	const Vec reference = reference_core_space(c, 0.7);
	expect_near(run("core_space", c), reference, 1e-5f);
	const MergeInput input = to_input(c);
	for (size_t panel_rows : {size_t{7}, size_t{0}}) {
		const auto kernel = core_space_rows_block_merge(input, c.sources.size(), 48000, panel_rows);
		ASSERT_NE(kernel, nullptr);
		Vec streamed(48000, -999.0f);
		merge_in_blocks(*kernel, input, streamed);
		expect_near(streamed, reference, 1e-5f);
	}
	c.shape = {16, 3000};
	expect_near(run("core_space", c), reference_core_space(c, 0.7), 1e-5f);
}

// Vectors take base + weight · mean Δ; a single source is copied.
TEST_F(CoreSpaceTest, VectorsTakeTheMeanTaskVector) {
	Case c{.sources = {{1, 2, 3, 4}, {2, 2, 3, 5}, {0, 1, 3, 4}}, .base_index = 0, .shape = {4}};
	c.params = {{"weight", 2}};
	expect_near(run("core_space", c), {1, 1, 3, 5}, kTolerance);
	expect_near(run("core_space", Case{.sources = {{7, 8}}}), {7, 8}, kTolerance);
}

} // namespace
} // namespace weld
