// End-to-end recipes for tsv, opcm and doge on tiny Llama families (F32 and BF16): they run,
// give the cheap-to-check values (vector tensors), are deterministic across thread counts, and
// reject bad recipes.
#include "exec/merge.h"
#include "test_util.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <cmath>

namespace weld {
namespace {

namespace fs = std::filesystem;
using test::TempDir;
using test::Tensors;

class SubspaceMergeTest : public ::testing::TestWithParam<DType> {
protected:
	void SetUp() override {
		spec_.dtype = GetParam();
		const auto base = make_tiny_llama(spec_, 7);
		const auto a = perturb(base, 0.05f, 11), b = perturb(base, 0.05f, 12);
		write_tiny_llama(dir_ / "base", spec_, base);
		write_tiny_llama(dir_ / "a", spec_, a);
		write_tiny_llama(dir_ / "b", spec_, b);
		base_ = test::stored_values(base, spec_.dtype);
		a_ = test::stored_values(a, spec_.dtype);
		b_ = test::stored_values(b, spec_.dtype);
	}

	Tensors merge(const std::string& recipe, unsigned threads = 2, const std::string& out = "out") {
		test::write_file(dir_ / "recipe.yml", recipe);
		MergeOptions options;
		options.recipe_path = dir_ / "recipe.yml";
		options.out_dir = dir_ / out;
		options.force = true;
		options.exec.threads = threads;
		const auto previous = fs::current_path();
		fs::current_path(dir_.path());
		struct Restore {
			fs::path path;
			~Restore() { fs::current_path(path); }
		} restore{previous};
		run_merge(options);
		return test::read_model(dir_ / out);
	}

	double tolerance(double x) const {
		const double eps = spec_.dtype == DType::BF16 ? 1.0 / 128 : 1e-6;
		return eps * std::max(std::abs(x), 1e-3) + 1e-6;
	}

	static std::string recipe(const std::string& method, const std::string& params = "{}") {
		return "merge_method: " + method + "\nbase_model: base\nparameters: " + params +
		       "\nmodels:\n  - model: a\n  - model: b\n";
	}

	TempDir dir_;
	TinyLlamaSpec spec_;
	Tensors base_, a_, b_;
};

const std::string kNorm = "model.norm.weight";

TEST_P(SubspaceMergeTest, TsvRunsAndAveragesVectors) {
	const Tensors out = merge(recipe("tsv"));
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
	const Tensors out = merge(recipe("opcm", "{alpha: 0.5}"));
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
	const Tensors out = merge(recipe("doge", "{steps: 20, lambda: 0.5}"));
	ASSERT_EQ(out.size(), base_.size());
	EXPECT_EQ(out.at(kNorm), base_[kNorm]);
	const std::string up = "model.layers.1.mlp.up_proj.weight";
	EXPECT_NE(out.at(up), base_[up]);
}

TEST_P(SubspaceMergeTest, ResultsDoNotDependOnThreads) {
	for (const std::string method : {"tsv", "opcm", "doge"}) {
		const std::string params = method == "doge" ? "{steps: 5}" : "{}";
		const Tensors one = merge(recipe(method, params), 1, "one");
		const Tensors four = merge(recipe(method, params), 4, "four");
		EXPECT_EQ(one, four) << method;
	}
}

INSTANTIATE_TEST_SUITE_P(SubspaceFamilies, SubspaceMergeTest, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& param_info) { return std::string(dtype_safetensors_name(param_info.param)); });

class SubspaceMergeErrorTest : public SubspaceMergeTest {};

TEST_P(SubspaceMergeErrorTest, RejectsBadRecipes) {
	// No base model.
	EXPECT_THROW(merge("merge_method: tsv\nmodels:\n  - model: a\n  - model: b\n"), Error);
	EXPECT_THROW(merge("merge_method: opcm\nmodels:\n  - model: a\n  - model: b\n"), Error);
	// Parameters out of range.
	EXPECT_THROW(merge(recipe("opcm", "{alpha: 1.5}")), Error);
	EXPECT_THROW(merge(recipe("doge", "{density: 0}")), Error);
	EXPECT_THROW(merge(recipe("doge", "{lr: 0}")), Error);
	EXPECT_THROW(merge(recipe("doge", "{subspace: 0.5}")), Error);
}

INSTANTIATE_TEST_SUITE_P(SubspaceFamilies, SubspaceMergeErrorTest, ::testing::Values(DType::F32),
                         [](const auto& param_info) { return std::string(dtype_safetensors_name(param_info.param)); });

} // namespace
} // namespace weld
