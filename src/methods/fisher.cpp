// Fisher merging (Matena & Raffel 2022): each parameter is the average of the models' values
// weighted by their diagonal Fisher information, θ = Σ w_i F̃_i θ_i / Σ w_i F̃_i with
// F̃_i = F_i + fisher_floor, so that parameters no model's data touched fall back to the
// weighted average instead of dividing by zero. F_i comes from `weld stats --kind fisher`.
#include "methods/methods.h"
#include "util/error.h"

#include <fmt/format.h>

namespace weld {
namespace {

class FisherMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const double floor = global_param(info_, input, "fisher_floor");
		const auto models = model_indices(input);
		std::vector<double> weights;
		for (size_t i : models) {
			weights.push_back(*source_param(info_, input, i, "weight"));
			if (input.statistics.size() <= i || input.statistics[i].size() != out.size())
				throw Error(fmt::format("tensor '{}': model {} has no Fisher statistics for it", input.tensor_name, i));
		}
		for (size_t j = 0; j < out.size(); ++j) {
			double num = 0, den = 0;
			for (size_t k = 0; k < models.size(); ++k) {
				const double f = weights[k] * (static_cast<double>(input.statistics[models[k]][j]) + floor);
				num += f * input.sources[models[k]][j];
				den += f;
			}
			if (den == 0)
				throw Error(fmt::format("tensor '{}': the Fisher weights of element {} sum to zero (raise fisher_floor "
				                        "or check the weights)",
				                        input.tensor_name, j));
			out[j] = static_cast<float>(num / den);
		}
	}

private:
	MethodInfo info_{
	    .name = "fisher",
	    .description = "Average weighted per parameter by each model's diagonal Fisher information (weld stats "
	                   "--kind fisher)",
	    .reference = "https://arxiv.org/abs/2111.09832",
	    .global_params = {{.name = "fisher_floor",
	                       .default_value = 1e-6,
	                       .help = "Added to every Fisher value (parameters no data touched get the plain average)",
	                       .min_value = 0}},
	    .model_params = statistics_source_params(
	        "Folder of this model's Fisher (weld stats --kind fisher)",
	        {{.name = "weight", .default_value = 1, .help = "Scales this model's Fisher", .min_value = 0}}),
	    .base = BaseModel::Ignored,
	    .statistics = "fisher",
	};
};

} // namespace

const MergeMethod& fisher_method() {
	static const FisherMethod method;
	return method;
}

} // namespace weld
