// End-to-end recipes for the literature group on tiny Llama families in F32 and BF16: each
// method runs through the planner and executor; values are checked where the definition gives
// them cheaply, and recipe errors (ranges, missing base, metrics) are reported.
#include "exec/merge.h"
#include "family_fixture.h"
#include "test_util.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

namespace fs = std::filesystem;
using test::Tensors;

class LiteratureMergeTest : public ::testing::TestWithParam<DType>, protected test::Family {
protected:
	LiteratureMergeTest() { tolerance_ = {1e-5, 1e-2, 1e-6}; }

	void SetUp() override { make_family(GetParam(), 2, 2, false, 21, 22); }
};

const std::string kTwoModels = "base_model: base\nmodels:\n  - model: a\n  - model: b\n";

// With lambda 1 the merged delta is a weighted mean of the task vectors (or zero), so every
// value lies between the smallest and largest of base, a and b.
TEST_P(LiteratureMergeTest, PcbStaysWithinTheModels) {
	const auto out = merged("merge_method: pcb\nparameters: {ratio: 0.3}\n" + kTwoModels);
	ASSERT_EQ(out.size(), base_.size());
	for (const auto& [name, values] : base_)
		for (size_t i = 0; i < values.size(); ++i) {
			const double lo = std::min({base_[name][i], a_[name][i], b_[name][i]});
			const double hi = std::max({base_[name][i], a_[name][i], b_[name][i]});
			ASSERT_GE(out.at(name)[i], lo - tolerance(lo)) << name << "[" << i << "]";
			ASSERT_LE(out.at(name)[i], hi + tolerance(hi)) << name << "[" << i << "]";
		}
}

TEST_P(LiteratureMergeTest, PcbOfOneModelWithRatioOneIsThatModel) {
	const auto out = merged("merge_method: pcb\nbase_model: base\nparameters: {ratio: 1}\nmodels:\n  - model: a\n");
	for (const auto& [name, values] : a_)
		for (size_t i = 0; i < values.size(); i += 5)
			expect_near(out, name, i, values[i]);
}

TEST_P(LiteratureMergeTest, WidenOfOneModelIsThatModelAndTwoModelsRun) {
	auto out = merged("merge_method: widen\nbase_model: base\nmodels:\n  - model: a\n");
	for (const auto& [name, values] : a_)
		for (size_t i = 0; i < values.size(); i += 5)
			expect_near(out, name, i, values[i]);
	out = merged("merge_method: widen\nparameters: {score_calibration_value: 0.8}\n" + kTwoModels);
	ASSERT_EQ(out.size(), base_.size());
	for (const auto& [name, values] : out)
		for (float v : values)
			ASSERT_TRUE(std::isfinite(v)) << name;
}

// w_i = mean(tau_i^2) / sum_j mean(tau_j^2) per tensor; out = sum_i w_i * theta_i.
TEST_P(LiteratureMergeTest, VarmWeighsEachTensorByVariation) {
	const auto out = merged("merge_method: varm\n" + kTwoModels);
	for (const auto& [name, values] : base_) {
		double sa = 0, sb = 0;
		for (size_t i = 0; i < values.size(); ++i) {
			sa += std::pow(a_[name][i] - values[i], 2);
			sb += std::pow(b_[name][i] - values[i], 2);
		}
		const double wa = sa / (sa + sb);
		for (size_t i = 0; i < values.size(); i += 3)
			expect_near(out, name, i, wa * a_[name][i] + (1 - wa) * b_[name][i]);
	}
}

// loss 2 and 0.5 with penalty 2: w ∝ [1/4, 4] -> [1/17, 16/17].
TEST_P(LiteratureMergeTest, MwaAveragesByLoss) {
	const auto out = merged("merge_method: mwa\nparameters: {penalty: 2}\nmodels:\n"
	                        "  - model: a\n    parameters: {loss: 2.0}\n  - model: b\n    parameters: {loss: 0.5}\n");
	for (const auto& [name, values] : a_)
		for (size_t i = 0; i < values.size(); i += 3)
			expect_near(out, name, i, (values[i] + 16.0 * b_[name][i]) / 17.0);
}

// density 1 keeps every changed element; where both changed, their deltas are averaged.
TEST_P(LiteratureMergeTest, LocalizeStitchAtFullDensityAveragesChanges) {
	const auto out = merged("merge_method: localize_stitch\nparameters: {density: 1.0}\n" + kTwoModels);
	for (const auto& [name, values] : base_)
		for (size_t i = 0; i < values.size(); i += 3) {
			const double da = a_[name][i] - values[i], db = b_[name][i] - values[i];
			const int count = (da != 0) + (db != 0);
			expect_near(out, name, i, values[i] + (count == 0 ? 0.0 : (da + db) / count));
		}
	// The default density (1%) runs and changes at most a few elements per tensor.
	const auto sparse = merged("merge_method: localize_stitch\n" + kTwoModels);
	const auto& q = sparse.at("model.layers.0.self_attn.q_proj.weight");
	const auto& q_base = base_.at("model.layers.0.self_attn.q_proj.weight");
	size_t changed = 0;
	for (size_t i = 0; i < q.size(); ++i)
		changed += q[i] != q_base[i];
	EXPECT_LE(changed, 2 * static_cast<size_t>(0.01 * static_cast<double>(q.size())));
}

INSTANTIATE_TEST_SUITE_P(Literature, LiteratureMergeTest, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& param_info) { return std::string(dtype_safetensors_name(param_info.param)); });

// ---- recipe errors ----
class LiteratureRecipeErrorTest : public LiteratureMergeTest {};

TEST_P(LiteratureRecipeErrorTest, RejectsBadRecipes) {
	const auto fails = [&](const std::string& recipe, const std::string& needle) {
		try {
			merged(recipe);
			ADD_FAILURE() << "expected an error for:\n" << recipe;
		} catch (const Error& e) {
			EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
		}
	};
	const std::string models = "models:\n  - model: a\n  - model: b\n";
	for (const char* method : {"pcb", "widen", "varm", "localize_stitch"})
		fails(std::string("merge_method: ") + method + "\n" + models, "needs a base_model");
	fails("merge_method: pcb\nparameters: {ratio: 0}\n" + kTwoModels, "'ratio'");
	fails("merge_method: pcb\nparameters: {ratio: 1.5}\n" + kTwoModels, "'ratio'");
	fails("merge_method: localize_stitch\nparameters: {density: 2}\n" + kTwoModels, "'density'");
	fails("merge_method: mwa\nparameters: {penalty: -1}\n" + models, "'penalty'");
	fails("merge_method: mwa\n" + models, "'loss' or a 'step'");
	fails("merge_method: mwa\nmodels:\n  - model: a\n    parameters: {loss: 1}\n  - model: b\n    parameters: {step: "
	      "3}\n",
	      "same metric");
	fails("merge_method: mwa\nmodels:\n  - model: a\n    parameters: {loss: 0}\n  - model: b\n    parameters: {loss: "
	      "1}\n",
	      "'loss'");
	fails("merge_method: varm\nparameters: {wieght: 1}\n" + kTwoModels,
	      "unknown parameter 'wieght' for method 'varm'; did you mean 'weight'?");
}

INSTANTIATE_TEST_SUITE_P(Literature, LiteratureRecipeErrorTest, ::testing::Values(DType::F32),
                         [](const auto& param_info) { return std::string(dtype_safetensors_name(param_info.param)); });

} // namespace
} // namespace weld
