// VaRM, Variation Ratio Merge (FuseChat, Wan et al. 2024): per tensor, each model's weight is
// its share of the mean squared change from the base, w_i = mean(tau_i^2) / sum_j mean(tau_j^2),
// and the merged tensor is sum_i w_i * theta_i (= theta_0 + sum_i w_i * tau_i, as sum w = 1).
//
// Streamed: one statistics pass sums each model's squared changes per block (combined in block
// order); the output pass is then a weighted sum.
#include "methods/methods.h"
#include "methods/reference.h"

#include <memory>

namespace weld {
namespace {

// Weights from each model's sum of squared changes over `elements` elements.
std::vector<double> varm_weights(const std::vector<double>& squares, uint64_t elements) {
	std::vector<double> weights;
	bool unchanged = false;
	for (double s : squares) {
		weights.push_back(elements == 0 ? 0.0 : s / static_cast<double>(elements));
		unchanged = unchanged || weights.back() == 0;
	}
	// As the reference: when any model left this tensor unchanged, weigh the models equally.
	double total = 0;
	for (double& w : weights)
		total += unchanged ? (w = 1.0) : w;
	for (double& w : weights)
		w /= total;
	return weights;
}

class VarmBlocks final : public BlockMerge {
public:
	VarmBlocks(std::vector<size_t> models, size_t base, uint64_t elements)
	    : models_(std::move(models)), base_(base), elements_(elements),
	      partials_(block_count(elements), std::vector<double>(models_.size())) {}

	int stat_passes() const override { return 1; }

	void observe(int, const Block& block, unsigned) override {
		const std::span<const float> base = block.sources[base_];
		for (size_t i = 0; i < models_.size(); ++i) {
			const std::span<const float> model = block.sources[models_[i]];
			double squares = 0;
			for (size_t j = 0; j < base.size(); ++j) {
				const double d = static_cast<double>(model[j]) - base[j];
				squares += d * d;
			}
			partials_[block.index][i] = squares;
		}
	}

	void end_pass(int) override {
		std::vector<double> squares(models_.size());
		for (const auto& partial : partials_)
			for (size_t i = 0; i < models_.size(); ++i)
				squares[i] += partial[i];
		partials_ = {};
		weights_ = varm_weights(squares, elements_);
	}

	void merge(const Block& block, std::span<float> out, unsigned) override {
		for (size_t j = 0; j < out.size(); ++j) {
			double sum = 0;
			for (size_t i = 0; i < models_.size(); ++i)
				sum += weights_[i] * block.sources[models_[i]][j];
			out[j] = static_cast<float>(sum);
		}
	}

private:
	std::vector<size_t> models_;
	size_t base_;
	uint64_t elements_;
	std::vector<std::vector<double>> partials_; // per block: each model's squared changes
	std::vector<double> weights_;
};

class VarmMethod final : public MergeMethod, public WholeTensorReference {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned) const override {
		check_source_count(info_, input, source_count);
		std::vector<size_t> models = model_indices(input, source_count);
		return std::make_unique<VarmBlocks>(std::move(models), static_cast<size_t>(input.base_index), elements);
	}

	// The whole-tensor form, kept as the reference of the streamed one.
	void merge_whole(const MergeInput& input, std::span<float> out) const override {
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
