// Metrics-Weighted Averaging of checkpoints (Choi & Yu 2025): a weighted average of the models
// whose weights come from each checkpoint's training loss (lower is better) or training step
// (later is better), sharpened by one penalty exponent p and normalised:
//   loss: w_i = loss_i^-p / sum_j loss_j^-p      step: w_i = step_i^p / sum_j step_j^p
// p = 0 is the uniform average; larger p concentrates the weight on the best checkpoint.
#include "methods/mwa.h"
#include "methods/methods.h"
#include "util/error.h"

#include <cmath>
#include <fmt/format.h>

namespace weld {
namespace {

class MwaMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const std::vector<double> weights = normalized_weights(input);
		for (size_t j = 0; j < out.size(); ++j) {
			double sum = 0;
			for (size_t i = 0; i < weights.size(); ++i)
				sum += weights[i] * input.sources[i][j];
			out[j] = static_cast<float>(sum);
		}
	}

private:
	std::vector<double> normalized_weights(const MergeInput& input) const {
		const double penalty = global_param(info_, input, "penalty");
		const size_t count = input.sources.size();
		std::vector<std::optional<double>> losses(count), steps(count);
		size_t with_loss = 0, with_step = 0;
		for (size_t i = 0; i < count; ++i) {
			losses[i] = source_param(info_, input, i, "loss");
			steps[i] = source_param(info_, input, i, "step");
			with_loss += losses[i].has_value();
			with_step += steps[i].has_value();
		}
		// Exactly one metric, given for every model: weights from a mix would mean nothing.
		if (with_loss + with_step == 0)
			throw Error(fmt::format("tensor '{}': mwa merge needs a 'loss' or a 'step' parameter for every model",
			                        input.tensor_name));
		if ((with_loss != 0 && with_loss != count) || (with_step != 0 && with_step != count) ||
		    (with_loss != 0 && with_step != 0))
			throw Error(fmt::format("tensor '{}': mwa merge needs the same metric for every model: 'loss' for all {} "
			                        "or 'step' for all (got loss for {}, step for {})",
			                        input.tensor_name, count, with_loss, with_step));
		std::vector<double> metrics(count);
		for (size_t i = 0; i < count; ++i)
			metrics[i] = with_loss ? *losses[i] : *steps[i];
		return mwa_weights(metrics, with_loss ? MwaMetric::Loss : MwaMetric::Step, penalty,
		                   fmt::format("tensor '{}'", input.tensor_name));
	}

	MethodInfo info_{
	    .name = "mwa",
	    .description = "Metrics-weighted average of checkpoints by training loss or step",
	    .reference = "https://arxiv.org/abs/2504.18580",
	    .global_params = {{.name = "penalty",
	                       .default_value = 1.0,
	                       .help = "Exponent sharpening the metric weights (0: uniform average)",
	                       .min_value = 0}},
	    .model_params = {{.name = "loss",
	                      .has_default = false,
	                      .help = "This checkpoint's training loss (lower weighs more)",
	                      .min_value = 0,
	                      .min_exclusive = true},
	                     {.name = "step",
	                      .has_default = false,
	                      .help = "This checkpoint's training step (later weighs more)",
	                      .min_value = 0,
	                      .min_exclusive = true}},
	    .base = BaseModel::Ignored,
	};
};

} // namespace

std::vector<double> mwa_weights(const std::vector<double>& metrics, MwaMetric metric, double penalty,
                                std::string_view context) {
	const bool loss = metric == MwaMetric::Loss;
	std::vector<double> weights(metrics.size());
	double total = 0;
	for (size_t i = 0; i < metrics.size(); ++i) {
		if (!(metrics[i] > 0))
			throw Error(fmt::format("{}: mwa {} of source {} is {:g}; it must be positive", context,
			                        loss ? "loss" : "step", i, metrics[i]));
		total += weights[i] = std::pow(metrics[i], loss ? -penalty : penalty);
	}
	if (!(total > 0) || !std::isfinite(total))
		throw Error(
		    fmt::format("{}: mwa weights are not finite for penalty {:g}; lower the penalty", context, penalty));
	for (double& w : weights)
		w /= total;
	return weights;
}

const MergeMethod& mwa_method() {
	static const MwaMethod method;
	return method;
}

} // namespace weld
