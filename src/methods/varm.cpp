// VaRM, Variation Ratio Merge (FuseChat, Wan et al. 2024): per tensor, each model's weight is
// its share of the mean squared change from the base, w_i = mean(tau_i^2) / sum_j mean(tau_j^2),
// and the merged tensor is sum_i w_i * theta_i (= theta_0 + sum_i w_i * tau_i, as sum w = 1).
#include "methods/methods.h"

namespace weld {
namespace {

class VarmMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		std::vector<std::span<const float>> models;
		std::vector<double> weights;
		bool unchanged = false;
		for (size_t i = 0; i < input.sources.size(); ++i) {
			if (static_cast<int>(i) == input.base_index) continue;
			models.push_back(input.sources[i]);
			double squares = 0;
			for (size_t j = 0; j < out.size(); ++j) {
				const double d = static_cast<double>(input.sources[i][j]) - base[j];
				squares += d * d;
			}
			weights.push_back(out.empty() ? 0.0 : squares / static_cast<double>(out.size()));
			unchanged = unchanged || weights.back() == 0;
		}
		// As the reference: when any model left this tensor unchanged, weigh the models equally.
		double total = 0;
		for (double& w : weights)
			total += unchanged ? (w = 1.0) : w;
		for (size_t j = 0; j < out.size(); ++j) {
			double sum = 0;
			for (size_t i = 0; i < models.size(); ++i)
				sum += weights[i] / total * models[i][j];
			out[j] = static_cast<float>(sum);
		}
	}

private:
	MethodInfo info_{
	    .name = "varm",
	    .description = "FuseChat VaRM: models weighted by their mean squared change from the base, per tensor",
	    .reference = "https://arxiv.org/abs/2402.16107",
	    .global_params = {},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .min_sources = 2,
	};
};

} // namespace

const MergeMethod& varm_method() {
	static const VarmMethod method;
	return method;
}

} // namespace weld
