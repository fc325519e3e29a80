// Metrics-Weighted Averaging of checkpoints (Choi & Yu 2025): a weighted average of the models
// whose weights come from each checkpoint's training loss (lower is better) or training step
// (later is better), sharpened by one penalty exponent p and normalised:
//   loss: w_i = loss_i^-p / sum_j loss_j^-p      step: w_i = step_i^p / sum_j step_j^p
// p = 0 is the uniform average; larger p concentrates the weight on the best checkpoint.
// The weights come from parameters alone, so tensors stream with no statistics pass.
#include "methods/mwa.h"
#include "methods/methods.h"
#include "methods/reference.h"
#include "util/error.h"

#include <cmath>
#include <fmt/format.h>
#include <memory>

namespace weld {
namespace {

// Σ weights[i]·sources[i][j], element by element.
void weighted_sum(const std::vector<double>& weights, std::span<const std::span<const float>> sources,
                  std::span<float> out) {
	for (size_t j = 0; j < out.size(); ++j) {
		double sum = 0;
		for (size_t i = 0; i < weights.size(); ++i)
			sum += weights[i] * sources[i][j];
		out[j] = static_cast<float>(sum);
	}
}

class MwaBlocks final : public BlockMerge {
public:
	explicit MwaBlocks(std::vector<double> weights) : weights_(std::move(weights)) {}
	int stat_passes() const override { return 0; }
	void observe(int, const Block&, unsigned) override {}
	void end_pass(int) override {}
	void merge(const Block& block, std::span<float> out, unsigned) override {
		weighted_sum(weights_, block.sources, out);
	}

private:
	std::vector<double> weights_;
};

class MwaMethod final : public MergeMethod, public WholeTensorReference {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t,
	                                        unsigned) const override {
		check_source_count(info_, input, source_count);
		return std::make_unique<MwaBlocks>(normalized_weights(input, source_count));
	}

	// The whole-tensor form, kept as the reference of the streamed one.
	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		weighted_sum(normalized_weights(input, input.sources.size()), input.sources, out);
	}

private:
	std::vector<double> normalized_weights(const MergeInput& input, size_t count) const {
		const double penalty = global_param(info_, input, "penalty");
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
