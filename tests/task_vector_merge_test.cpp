// End-to-end merges with the task-vector group on tiny Llama families (F32 and BF16): recipe
// in, model folder out; values checked against the definitions where that is cheap, the random
// methods for determinism.
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

class TaskVectorMergeTest : public ::testing::TestWithParam<DType>, protected test::Family {
protected:
	void SetUp() override { make_family(GetParam(), 2, 3); }
};

const std::string kTwoModels = "base_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1.0}\n"
                               "  - model: b\n    parameters: {weight: 2.0}\n";

TEST_P(TaskVectorMergeTest, DellaAtDensityOneIsTiesAndDellaLinearIsTaskArithmetic) {
	const Tensors della = merged("merge_method: della\n" + kTwoModels, "della");
	const Tensors linear = merged("merge_method: della_linear\n" + kTwoModels, "linear");
	ASSERT_EQ(della.size(), base_.size());
	for (const auto& [name, base] : base_)
		for (size_t i = 0; i < base.size(); i += 3) {
			const double da = a_[name][i] - base[i], db = b_[name][i] - base[i];
			const double sign = (da + 2 * db) >= 0 ? 1 : -1;
			double sum = 0, weights = 0;
			if (da * sign > 0) sum += da, weights += 1;
			if (db * sign > 0) sum += 2 * db, weights += 2;
			const double ties = base[i] + sum / (weights == 0 ? 1 : weights);
			EXPECT_NEAR(della.at(name)[i], ties, tolerance(ties)) << name << "[" << i << "]";
			const double ta = base[i] + da + 2 * db;
			EXPECT_NEAR(linear.at(name)[i], ta, tolerance(ta)) << name << "[" << i << "]";
		}
}

TEST_P(TaskVectorMergeTest, DellaSparsifiesDeterministically) {
	for (const std::string method : {"della", "della_linear"}) {
		const std::string recipe = "merge_method: " + method +
		                           "\nbase_model: base\nparameters: {lambda: 0.9}\nmodels:\n"
		                           "  - model: a\n    parameters: {weight: 1.0, density: 0.5, epsilon: 0.1}\n"
		                           "  - model: b\n    parameters: {weight: 0.5, density: 0.3}\n";
		const Tensors one = merged(recipe, method + "1", 1, 5);
		EXPECT_EQ(merged(recipe, method + "2", 2, 5), one) << method;
		EXPECT_NE(merged(recipe, method + "3", 2, 6), one) << method;
		// Some elements change, many keep the base value (both deltas dropped).
		const auto& up = one.at("model.layers.0.mlp.up_proj.weight");
		const auto& base = base_["model.layers.0.mlp.up_proj.weight"];
		size_t same = 0;
		for (size_t i = 0; i < up.size(); ++i)
			same += up[i] == base[i];
		EXPECT_GT(same, up.size() / 10) << method;
		EXPECT_LT(same, up.size() / 2) << method;
	}
}

// One model, density 0.5, gamma 0.1: every output element is the base (dropped) or the model
// (kept), about half are kept, and the largest |delta| of every tensor is dropped.
TEST_P(TaskVectorMergeTest, BreadcrumbsKeepsTheBandBelowTheOutliers) {
	for (const std::string method : {"breadcrumbs", "breadcrumbs_ties"}) {
		const Tensors out = merged("merge_method: " + method +
		                               "\nbase_model: base\nmodels:\n  - model: a\n"
		                               "    parameters: {weight: 1.0, density: 0.5, gamma: 0.1}\n",
		                           method);
		for (const auto& [name, base] : base_) {
			const auto &a = a_[name], &o = out.at(name);
			size_t kept = 0, largest = 0;
			for (size_t i = 0; i < base.size(); ++i) {
				const bool is_base = std::abs(o[i] - base[i]) <= tolerance(base[i]);
				const bool is_a = std::abs(o[i] - a[i]) <= tolerance(a[i]);
				EXPECT_TRUE(is_base || is_a) << method << " " << name << "[" << i << "]";
				kept += o[i] != base[i]; // dropped deltas leave the base value exactly
				if (std::abs(a[i] - base[i]) > std::abs(a[largest] - base[largest])) largest = i;
			}
			if (base.size() < 10) continue;
			EXPECT_NEAR(static_cast<double>(kept) / base.size(), 0.5, 0.05) << method << " " << name;
			EXPECT_NEAR(o[largest], base[largest], tolerance(base[largest])) << method << " " << name;
		}
	}
}

TEST_P(TaskVectorMergeTest, SceWeightsByMeanSquare) {
	const Tensors out = merged("merge_method: sce\nbase_model: base\nmodels:\n  - model: a\n  - model: b\n");
	for (const auto& [name, base] : base_) {
		const auto &a = a_[name], &b = b_[name];
		double sa = 0, sb = 0;
		for (size_t i = 0; i < base.size(); ++i)
			sa += (a[i] - base[i]) * (a[i] - base[i]), sb += (b[i] - base[i]) * (b[i] - base[i]);
		const double n = static_cast<double>(base.size());
		double wa = sa / n, wb = sb / n;
		if (wa + wb < 1e-6)
			wa = wb = 0.5;
		else
			wa /= wa + wb, wb = 1 - wa;
		for (size_t i = 0; i < base.size(); i += 3) {
			const double da = a[i] - base[i], db = b[i] - base[i];
			const bool positive = da + db >= 0;
			double sum = 0, weights = 0;
			if (positive ? da > 0 : da < 0) sum += wa * da, weights += wa;
			if (positive ? db > 0 : db < 0) sum += wb * db, weights += wb;
			const double expected = base[i] + sum / std::max(weights, 1e-6);
			EXPECT_NEAR(out.at(name)[i], expected, tolerance(expected)) << name << "[" << i << "]";
		}
	}
	// select_topk < 1 runs and leaves some positions at the base.
	const Tensors topk = merged("merge_method: sce\nbase_model: base\nparameters: {select_topk: 0.3}\n"
	                            "models:\n  - model: a\n  - model: b\n",
	                            "topk");
	const auto& up = topk.at("model.layers.0.mlp.up_proj.weight");
	const auto& base = base_["model.layers.0.mlp.up_proj.weight"];
	size_t same = 0;
	for (size_t i = 0; i < up.size(); ++i)
		same += up[i] == base[i];
	// About 70% of the positions are dropped (a few kept ones may round back to the base).
	EXPECT_GT(same, up.size() / 2);
}

TEST_P(TaskVectorMergeTest, ConsensusTaKeepsAgreedEntries) {
	const Tensors out = merged("merge_method: consensus_ta\nbase_model: base\nparameters: {lambda: 0.5}\n"
	                           "models:\n  - model: a\n  - model: b\n  - model: c\n");
	size_t checked = 0, kept = 0;
	for (const auto& [name, base] : base_)
		for (size_t i = 0; i < base.size(); i += 2) {
			const double d[3] = {a_[name][i] - base[i], b_[name][i] - base[i], c_[name][i] - base[i]};
			const double mtl = d[0] + d[1] + d[2];
			int count = 0;
			bool borderline = false;
			for (double tau : d) {
				const double margin = std::abs(tau) - 0.6 * std::abs(mtl - tau);
				borderline |= std::abs(margin) < 1e-4;
				count += margin > 0;
			}
			if (borderline) continue;
			const double expected = base[i] + (count >= 2 ? 0.5 * mtl : 0.0);
			EXPECT_NEAR(out.at(name)[i], expected, tolerance(expected)) << name << "[" << i << "]";
			++checked;
			kept += count >= 2;
		}
	EXPECT_GT(checked, 1000u);
	EXPECT_GT(kept, checked / 10);
	EXPECT_LT(kept, checked);
}

TEST_P(TaskVectorMergeTest, ConsensusTiesRunsDeterministically) {
	const std::string recipe = "merge_method: consensus_ties\nbase_model: base\nparameters: {k: 2}\nmodels:\n"
	                           "  - model: a\n    parameters: {density: 0.5, tall_lambda: 0.4}\n"
	                           "  - model: b\n    parameters: {density: 0.5}\n  - model: c\n";
	const Tensors one = merged(recipe, "one", 1);
	EXPECT_EQ(merged(recipe, "two", 2), one);
	EXPECT_NE(one, base_);
}

TEST_P(TaskVectorMergeTest, ParameterErrors) {
	const auto with = [](const std::string& method, const std::string& params) {
		return "merge_method: " + method + "\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1.0, " +
		       params + "}\n";
	};
	for (const std::string method : {"della", "breadcrumbs", "consensus_ties"}) {
		EXPECT_NE(merge_error(with(method, "density: 0")).find("density"), std::string::npos) << method;
		EXPECT_NE(merge_error(with(method, "density: 1.5")).find("density"), std::string::npos) << method;
	}
	EXPECT_NE(merge_error(with("breadcrumbs", "gamma: 1.5")).find("gamma"), std::string::npos);
	EXPECT_NE(merge_error(with("della", "density: 0.1")).find("epsilon"), std::string::npos);
	EXPECT_NE(merge_error(with("della", "gamam: 0.1")).find("did you mean 'gamma'"), std::string::npos); // unknown
	EXPECT_NE(merge_error(with("consensus_ta", "tall_lambda: -1")).find("tall_lambda"), std::string::npos);
	EXPECT_NE(merge_error("merge_method: sce\nbase_model: base\nparameters: {select_topk: 0}\nmodels:\n"
	                      "  - model: a\n")
	              .find("select_topk"),
	          std::string::npos);
	// No base model.
	EXPECT_FALSE(merge_error("merge_method: della\nmodels:\n  - model: a\n    parameters: {weight: 1.0}\n"
	                         "  - model: b\n    parameters: {weight: 1.0}\n")
	                 .empty());
	EXPECT_FALSE(merge_error("merge_method: sce\nmodels:\n  - model: a\n  - model: b\n").empty());
	// Weight is required by della.
	EXPECT_NE(merge_error("merge_method: della\nbase_model: base\nmodels:\n  - model: a\n").find("weight"),
	          std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Families, TaskVectorMergeTest, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& param_info) { return param_info.param == DType::F32 ? "F32" : "BF16"; });

} // namespace
} // namespace weld
