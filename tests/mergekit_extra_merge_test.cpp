// End-to-end merges with the mergekit-parity methods on tiny Llama families (F32 and BF16):
// recipe in, model folder out, values checked against the methods' definitions computed here.
#include "exec/merge.h"
#include "family_fixture.h"
#include "test_util.h"
#include "util/error.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

namespace fs = std::filesystem;
using test::Tensors;
using Vec = std::vector<float>;

double dot(const Vec& x, const Vec& y) {
	double s = 0;
	for (size_t i = 0; i < x.size(); i++)
		s += static_cast<double>(x[i]) * y[i];
	return s;
}

class MergekitExtraMergeTest : public ::testing::TestWithParam<DType>, protected test::Family {
protected:
	MergekitExtraMergeTest() { tolerance_ = {2e-6, 1e-3, 1e-6}; }

	void SetUp() override { make_family(GetParam(), 2, 3); }

	Vec delta(const Tensors& model, const std::string& name) {
		Vec d(base_[name].size());
		for (size_t i = 0; i < d.size(); i++)
			d[i] = model.at(name)[i] - base_[name][i];
		return d;
	}
};

TEST_P(MergekitExtraMergeTest, ModelStock) {
	const auto out = merged("merge_method: model_stock\nbase_model: base\nmodels:\n  - model: a\n  - model: b\n");
	ASSERT_EQ(out.size(), base_.size());
	for (const auto& [name, base] : base_) {
		const Vec da = delta(a_, name), db = delta(b_, name);
		const double cos = dot(da, db) / std::max(std::sqrt(dot(da, da) * dot(db, db)), 1e-6);
		const double t = 2 * cos / (1 + cos);
		for (size_t i = 0; i < base.size(); i += 7)
			expect_near(out, name, i, t * (a_[name][i] + b_[name][i]) / 2 + (1 - t) * base[i]);
	}
}

TEST_P(MergekitExtraMergeTest, NuSlerpWithAndWithoutBase) {
	for (const bool with_base : {true, false}) {
		const auto out =
		    merged(std::string("merge_method: nuslerp\n") + (with_base ? "base_model: base\n" : "") + "models:\n" +
		           (with_base ? "  - model: base\n" : "") +
		           "  - model: a\n    parameters: {weight: 1}\n  - model: b\n    parameters: {weight: 2}\n");
		for (const auto& [name, base] : base_) {
			const Vec v0 = with_base ? delta(a_, name) : a_[name], v1 = with_base ? delta(b_, name) : b_[name];
			const double theta = std::acos(std::clamp(dot(v0, v1) / std::sqrt(dot(v0, v0) * dot(v1, v1)), -1.0, 1.0));
			const double c0 = std::sin(theta / 3) / std::sin(theta), c1 = std::sin(2 * theta / 3) / std::sin(theta);
			for (size_t i = 0; i < base.size(); i += 7)
				expect_near(out, name, i, (with_base ? base[i] : 0.0) + c0 * v0[i] + c1 * v1[i]);
		}
	}
}

// Multi-SLERP's tangent step vanishes at the weighted mean, so the result is the normalized
// weighted mean of the unit task vectors times their weighted mean norm.
TEST_P(MergekitExtraMergeTest, MultiSlerp) {
	const auto out = merged("merge_method: multislerp\nbase_model: base\nmodels:\n  - model: base\n"
	                        "  - model: a\n    parameters: {weight: 1}\n  - model: b\n    parameters: {weight: 2}\n"
	                        "  - model: c\n    parameters: {weight: 1}\n");
	for (const auto& [name, base] : base_) {
		const std::vector<Vec> deltas = {delta(a_, name), delta(b_, name), delta(c_, name)};
		const std::vector<double> weights = {0.25, 0.5, 0.25};
		std::vector<double> mean(base.size(), 0.0);
		double scale = 0;
		for (size_t m = 0; m < 3; m++) {
			const double norm = std::sqrt(dot(deltas[m], deltas[m]));
			scale += weights[m] * norm;
			for (size_t i = 0; i < base.size(); i++)
				mean[i] += weights[m] * deltas[m][i] / norm;
		}
		double mean_norm = 0;
		for (double x : mean)
			mean_norm += x * x;
		mean_norm = std::sqrt(mean_norm);
		for (size_t i = 0; i < base.size(); i += 7)
			expect_near(out, name, i, base[i] + mean[i] / mean_norm * scale);
	}
}

// Two sources with equal weights: the Karcher mean is the direction halfway between them.
TEST_P(MergekitExtraMergeTest, Karcher) {
	const auto out = merged("merge_method: karcher\nmodels:\n  - model: a\n  - model: b\n");
	for (const auto& [name, a] : a_) {
		const Vec& b = b_[name];
		const double na = std::sqrt(dot(a, a)), nb = std::sqrt(dot(b, b));
		std::vector<double> mid(a.size());
		double norm = 0;
		for (size_t i = 0; i < a.size(); i++) {
			mid[i] = a[i] / na + b[i] / nb;
			norm += mid[i] * mid[i];
		}
		norm = std::sqrt(norm);
		for (size_t i = 0; i < a.size(); i += 7)
			expect_near(out, name, i, (na + nb) / 2 * mid[i] / norm);
	}
}

TEST_P(MergekitExtraMergeTest, NearSwap) {
	const auto out = merged("merge_method: nearswap\nbase_model: base\nparameters: {t: 0.02}\nmodels:\n"
	                        "  - model: base\n  - model: a\n");
	for (const auto& [name, base] : base_)
		for (size_t i = 0; i < base.size(); i += 3) {
			const double a = a_[name][i];
			const double w = std::clamp(0.02 / std::max(std::abs(base[i] - a), 1e-6), 0.0, 1.0);
			expect_near(out, name, i, w * a + (1 - w) * base[i]);
		}
}

// Noise of 0.05 changes (nearly) every element, so most are shared; the counts decide anyway.
TEST_P(MergekitExtraMergeTest, RamAndRamPlus) {
	for (const bool plus : {false, true}) {
		const auto out =
		    merged(std::string("merge_method: ") + (plus ? "ramplus_tl" : "ram") +
		           "\nbase_model: base\nparameters: {epsilon: 0.01}\nmodels:\n  - model: a\n  - model: b\n");
		for (const auto& [name, base] : base_) {
			const std::vector<Vec> deltas = {delta(a_, name), delta(b_, name)};
			double shared[2] = {0, 0}, unique[2] = {0, 0};
			for (size_t i = 0; i < base.size(); i++) {
				const bool on[2] = {std::abs(deltas[0][i]) > 0.01, std::abs(deltas[1][i]) > 0.01};
				for (int m = 0; m < 2; m++)
					if (on[m]) (on[0] && on[1] ? shared : unique)[m] += 1;
			}
			double lambda[2];
			for (int m = 0; m < 2; m++)
				lambda[m] = plus ? 1 + 0.1 * std::clamp(shared[m] / std::max(unique[m], 0.01), 0.0, 0.2) : 1;
			for (size_t i = 0; i < base.size(); i += 3) {
				const bool on[2] = {std::abs(deltas[0][i]) > 0.01, std::abs(deltas[1][i]) > 0.01};
				double sum = 0;
				for (int m = 0; m < 2; m++)
					if (on[m]) sum += on[0] && on[1] ? deltas[m][i] / 2 : lambda[m] * deltas[m][i];
				expect_near(out, name, i, base[i] + sum);
			}
		}
	}
}

// mergekit's examples/arcee_fusion.yml, unchanged, with local folders model_a and model_b.
TEST_P(MergekitExtraMergeTest, ArceeFusionMergekitExample) {
	fs::rename(dir_ / "base", dir_ / "model_a");
	fs::rename(dir_ / "a", dir_ / "model_b");
	const auto out = merged("models:\n  - model: model_a\n  - model: model_b\nmerge_method: arcee_fusion\n"
	                        "base_model: model_a\ndtype: bfloat16\n");
	const auto config = nlohmann::json::parse(test::read_file(dir_ / "out" / "config.json"));
	EXPECT_EQ(config["torch_dtype"], "bfloat16");
	size_t kept = 0, total = 0;
	for (const auto& [name, base] : base_)
		for (size_t i = 0; i < base.size(); i++) {
			const double merged = out.at(name)[i], from = a_[name][i];
			const bool is_base = std::abs(merged - base[i]) <= 1.0 / 128 * std::abs(base[i]) + 1e-6;
			const bool is_model = std::abs(merged - from) <= 1.0 / 128 * std::abs(from) + 1e-6;
			EXPECT_TRUE(is_base || is_model) << name << "[" << i << "]";
			kept += !is_base;
			total++;
		}
	// Only outlier changes survive: some, but far from all.
	EXPECT_GT(kept, 0u);
	EXPECT_LT(kept, total / 4);
}

TEST_P(MergekitExtraMergeTest, WrongCountsAndParametersAreClearErrors) {
	EXPECT_NE(merge_error("merge_method: nearswap\nbase_model: base\nparameters: {t: 0.1}\nmodels:\n"
	                      "  - model: a\n  - model: b\n")
	              .find("nearswap"),
	          std::string::npos);
	EXPECT_NE(merge_error("merge_method: nearswap\nbase_model: base\nparameters: {t: -0.1}\nmodels:\n  - model: a\n")
	              .find("'t'"),
	          std::string::npos);
	EXPECT_NE(merge_error("merge_method: model_stock\nbase_model: base\nmodels:\n  - model: a\n").find("model_stock"),
	          std::string::npos);
	EXPECT_NE(merge_error("merge_method: model_stock\nmodels:\n  - model: a\n  - model: b\n").find("base_model"),
	          std::string::npos);
	EXPECT_NE(merge_error("merge_method: karcher\nparameters: {max_iter: -1}\nmodels:\n  - model: a\n  - model: b\n")
	              .find("max_iter"),
	          std::string::npos);
	EXPECT_NE(merge_error("merge_method: nuslerp\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
	                      "  - model: b\n    parameters: {weight: 1}\n  - model: c\n    parameters: {weight: 1}\n")
	              .find("exactly two"),
	          std::string::npos);
	EXPECT_NE(merge_error("merge_method: arcee_fusion\nbase_model: base\nmodels:\n  - model: a\n  - model: b\n")
	              .find("arcee_fusion"),
	          std::string::npos);
	EXPECT_NE(merge_error("merge_method: ram\nmodels:\n  - model: a\n  - model: b\n").find("base_model"),
	          std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(MergekitExtra, MergekitExtraMergeTest, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& param_info) { return std::string(dtype_safetensors_name(param_info.param)); });

} // namespace
} // namespace weld
