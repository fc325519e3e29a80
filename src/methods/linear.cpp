// Linear: a weighted average of every source (Wortsman et al., "Model soups").
#include "methods/methods.h"
#include "util/error.h"

#include <fmt/format.h>

namespace weld {
namespace {

class LinearMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const bool normalize = global_param(info_, input, "normalize") != 0;
		// Every source takes part, the base too when the recipe lists it among the models.
		std::vector<double> weights;
		double weight_sum = 0;
		for (size_t i = 0; i < input.sources.size(); ++i) {
			weights.push_back(*source_param(info_, input, i, "weight"));
			weight_sum += weights.back();
		}
		// mergekit would write inf/NaN here; a clear error is more useful.
		if (normalize && weight_sum == 0)
			throw Error(
			    fmt::format("tensor '{}': linear merge weights sum to zero and normalize is on", input.tensor_name));
		for (size_t j = 0; j < out.size(); ++j) {
			double sum = 0;
			for (size_t i = 0; i < weights.size(); ++i)
				sum += weights[i] * input.sources[i][j];
			out[j] = static_cast<float>(normalize ? sum / weight_sum : sum);
		}
	}

private:
	MethodInfo info_{
	    .name = "linear",
	    .description = "Weighted average of the models' tensors",
	    .reference = "https://arxiv.org/abs/2203.05482",
	    .global_params = {{.name = "normalize",
	                       .type = ParamType::Bool,
	                       .default_value = 1,
	                       .help = "Divide by the sum of the weights"}},
	    .model_params = {{.name = "weight", .required = true, .help = "Weight of this model in the average"}},
	    .base = BaseModel::Ignored,
	};
};

} // namespace

const MergeMethod& linear_method() {
	static const LinearMethod method;
	return method;
}

} // namespace weld
