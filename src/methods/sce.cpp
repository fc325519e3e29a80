// SCE (Select, Calculate, Erase; FuseChat 2, https://arxiv.org/abs/2408.07990) as mergekit's
// sce.py: keep the select_topk fraction of positions where the task vectors vary most, weight
// each task vector by its mean squared (masked) delta, elect signs TIES-style on the unweighted
// sum, and average the agreeing deltas by those weights.
#include "methods/methods.h"
#include "tensor/kernels.h"

#include <cmath>

namespace weld {
namespace {

class SceMethod final : public MergeMethod {
public:
	SceMethod() {
		info_ = {
		    .name = "sce",
		    .description = "SCE: top-variance positions, mean-square task weights, sign election",
		    .reference = "https://arxiv.org/abs/2408.07990",
		    .global_params = {{.name = "int8_mask",
		                       .type = ParamType::Bool,
		                       .default_value = 0,
		                       .help = "Accepted for mergekit compatibility; no effect in float32"},
		                      {.name = "select_topk",
		                       .default_value = 1.0,
		                       .help = "Fraction of positions (by variance across task vectors) to keep",
		                       .min_value = 0,
		                       .max_value = 1,
		                       .min_exclusive = true}},
		    .model_params = {},
		    .base = BaseModel::Required,
		};
	}

	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const auto base_index = static_cast<size_t>(input.base_index);
		const std::span<const float> base = input.sources[base_index];
		std::vector<std::vector<float>> tvs;
		for (size_t i = 0; i < input.sources.size(); ++i) {
			if (i == base_index) continue;
			auto& tv = tvs.emplace_back(out.size());
			for (size_t j = 0; j < out.size(); ++j)
				tv[j] = input.sources[i][j] - base[j];
		}
		if (const double topk = global_param(info_, input, "select_topk"); topk < 1) select(tvs, topk);
		const std::vector<double> weights = task_weights(tvs);
		for (size_t j = 0; j < out.size(); ++j) {
			double sum = 0;
			for (const auto& tv : tvs)
				sum += tv[j];
			// Majority sign of the unweighted sum (zero counts as +); zeros match neither sign.
			const bool positive = sum >= 0;
			double merged = 0, divisor = 0;
			for (size_t t = 0; t < tvs.size(); ++t) {
				const float d = tvs[t][j];
				if (!(positive ? d > 0 : d < 0)) continue;
				merged += weights[t] * d;
				divisor += weights[t];
			}
			out[j] = static_cast<float>(base[j] + merged / std::max(divisor, 1e-6));
		}
	}

private:
	MethodInfo info_;

	// Zeroes every task vector outside the int(select_topk * #nonzero-variance) positions of
	// largest variance across task vectors (population variance; ties: lower index first).
	static void select(std::vector<std::vector<float>>& tvs, double topk) {
		if (tvs.empty()) return;
		const size_t n = tvs[0].size();
		std::vector<float> variance(n);
		size_t nonzero = 0;
		for (size_t j = 0; j < n; ++j) {
			double mean = 0, square = 0;
			for (const auto& tv : tvs)
				mean += tv[j];
			mean /= static_cast<double>(tvs.size());
			for (const auto& tv : tvs)
				square += (tv[j] - mean) * (tv[j] - mean);
			variance[j] = static_cast<float>(square / static_cast<double>(tvs.size()));
			nonzero += variance[j] != 0;
		}
		keep_top_k_by_magnitude(variance, static_cast<size_t>(std::floor(topk * static_cast<double>(nonzero))));
		for (auto& tv : tvs)
			for (size_t j = 0; j < n; ++j)
				if (variance[j] == 0) tv[j] = 0.0f;
	}

	// Each task vector's mean square, normalized to sum 1; equal weights when that sum is < 1e-6.
	static std::vector<double> task_weights(const std::vector<std::vector<float>>& tvs) {
		std::vector<double> weights(tvs.size());
		double total = 0;
		for (size_t t = 0; t < tvs.size(); ++t) {
			double square = 0;
			for (float d : tvs[t])
				square += static_cast<double>(d) * d;
			weights[t] = tvs[t].empty() ? 0 : square / static_cast<double>(tvs[t].size());
			total += weights[t];
		}
		for (double& w : weights)
			w = std::fabs(total) < 1e-6 ? 1.0 / static_cast<double>(weights.size()) : w / total;
		return weights;
	}
};

} // namespace

const MergeMethod& sce_method() {
	static const SceMethod method;
	return method;
}

} // namespace weld
