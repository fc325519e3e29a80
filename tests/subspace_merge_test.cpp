// End-to-end recipes for tsv, opcm and doge on tiny Llama families (F32 and BF16): they run,
// give the cheap-to-check values (vector tensors), are deterministic across thread counts, and
// reject bad recipes.
#include "exec/merge.h"
#include "family_fixture.h"
#include "test_util.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <cmath>

namespace weld {
namespace {

namespace fs = std::filesystem;
using test::Tensors;

class SubspaceMergeTest : public ::testing::TestWithParam<DType>, protected test::Family {
protected:
	SubspaceMergeTest() { tolerance_ = {1e-6, 1e-3, 1e-6}; }

	void SetUp() override { make_family(GetParam(), 2, 2); }

	static std::string recipe(const std::string& method, const std::string& params = "{}") {
		return "merge_method: " + method + "\nbase_model: base\nparameters: " + params +
		       "\nmodels:\n  - model: a\n  - model: b\n";
	}
};

const std::string kNorm = "model.norm.weight";

TEST_P(SubspaceMergeTest, TsvRunsAndAveragesVectors) {
	const Tensors out = merged(recipe("tsv"));
	ASSERT_EQ(out.size(), base_.size());
	for (size_t i = 0; i < out.at(kNorm).size(); ++i) {
		const double base = base_[kNorm][i], mean = ((a_[kNorm][i] - base) + (b_[kNorm][i] - base)) / 2;
		EXPECT_NEAR(out.at(kNorm)[i], base + mean, tolerance(base + mean)) << i;
	}
	// A matrix moved away from the base.
	const std::string q = "model.layers.0.self_attn.q_proj.weight";
	EXPECT_NE(out.at(q), base_[q]);
}

TEST_P(SubspaceMergeTest, OpcmRunsAndRescalesVectors) {
	const Tensors out = merged(recipe("opcm", "{alpha: 0.5}"));
	ASSERT_EQ(out.size(), base_.size());
	// Vectors: (τa + τb) rescaled to the mean of ‖τa‖, ‖τb‖.
	const auto &base = base_[kNorm], &a = a_[kNorm], &b = b_[kNorm];
	double na = 0, nb = 0, ns = 0;
	for (size_t i = 0; i < base.size(); ++i) {
		const double da = a[i] - base[i], db = b[i] - base[i];
		na += da * da, nb += db * db, ns += (da + db) * (da + db);
	}
	const double scale = (std::sqrt(na) + std::sqrt(nb)) / 2 / std::sqrt(ns);
	for (size_t i = 0; i < base.size(); ++i) {
		const double expected = base[i] + scale * ((a[i] - base[i]) + (b[i] - base[i]));
		EXPECT_NEAR(out.at(kNorm)[i], expected, tolerance(expected)) << i;
	}
}

TEST_P(SubspaceMergeTest, DogeRunsAndKeepsBaseVectors) {
	const Tensors out = merged(recipe("doge", "{steps: 20, lambda: 0.5}"));
	ASSERT_EQ(out.size(), base_.size());
	EXPECT_EQ(out.at(kNorm), base_[kNorm]);
	const std::string up = "model.layers.1.mlp.up_proj.weight";
	EXPECT_NE(out.at(up), base_[up]);
}

TEST_P(SubspaceMergeTest, ResultsDoNotDependOnThreads) {
	for (const std::string method : {"tsv", "opcm", "doge"}) {
		const std::string params = method == "doge" ? "{steps: 5}" : "{}";
		const Tensors one = merged(recipe(method, params), "one", 1);
		const Tensors four = merged(recipe(method, params), "four", 4);
		EXPECT_EQ(one, four) << method;
	}
}

INSTANTIATE_TEST_SUITE_P(SubspaceFamilies, SubspaceMergeTest, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& param_info) { return std::string(dtype_safetensors_name(param_info.param)); });

class SubspaceMergeErrorTest : public SubspaceMergeTest {};

TEST_P(SubspaceMergeErrorTest, RejectsBadRecipes) {
	// No base model.
	EXPECT_THROW(merged("merge_method: tsv\nmodels:\n  - model: a\n  - model: b\n"), Error);
	EXPECT_THROW(merged("merge_method: opcm\nmodels:\n  - model: a\n  - model: b\n"), Error);
	// Parameters out of range.
	EXPECT_THROW(merged(recipe("opcm", "{alpha: 1.5}")), Error);
	EXPECT_THROW(merged(recipe("doge", "{density: 0}")), Error);
	EXPECT_THROW(merged(recipe("doge", "{lr: 0}")), Error);
	EXPECT_THROW(merged(recipe("doge", "{subspace: 0.5}")), Error);
}

INSTANTIATE_TEST_SUITE_P(SubspaceFamilies, SubspaceMergeErrorTest, ::testing::Values(DType::F32),
                         [](const auto& param_info) { return std::string(dtype_safetensors_name(param_info.param)); });

} // namespace
} // namespace weld
