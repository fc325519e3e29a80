// Linear: a weighted average of every source (Wortsman et al., "Model soups").
#include "methods/methods.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>

namespace weld {
namespace {

class WeightedSum final : public BlockMerge {
public:
	WeightedSum(std::vector<double> weights, double divisor) : weights_(std::move(weights)), divisor_(divisor) {}
	int stat_passes() const override { return 0; }
	void observe(int, const Block&, unsigned) override {}
	void end_pass(int) override {}
	void merge(const Block& block, std::span<float> out, unsigned) override {
		// Chunks with the sources outermost, so the element loops vectorize; each element still
		// sums its sources in recipe order.
		constexpr size_t kChunk = 512;
		double sum[kChunk];
		for (size_t start = 0; start < out.size(); start += kChunk) {
			const size_t count = std::min(kChunk, out.size() - start);
			std::fill_n(sum, count, 0.0);
			for (size_t i = 0; i < weights_.size(); ++i) {
				const float* x = block.sources[i].data() + start;
				for (size_t j = 0; j < count; ++j)
					sum[j] += weights_[i] * x[j];
			}
			for (size_t j = 0; j < count; ++j)
				out[start + j] = static_cast<float>(sum[j] / divisor_);
		}
	}

private:
	std::vector<double> weights_;
	double divisor_;
};

class LinearMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t,
	                                        unsigned) const override {
		check_source_count(info_, input, source_count);
		const bool normalize = global_param(info_, input, "normalize") != 0;
		// Every source takes part, the base too when the recipe lists it among the models.
		std::vector<double> weights;
		double weight_sum = 0;
		for (size_t i = 0; i < source_count; ++i) {
			weights.push_back(*source_param(info_, input, i, "weight"));
			weight_sum += weights.back();
		}
		// mergekit would write inf/NaN here; a clear error is more useful.
		if (normalize && weight_sum == 0)
			throw Error(
			    fmt::format("tensor '{}': linear merge weights sum to zero and normalize is on", input.tensor_name));
		return std::make_unique<WeightedSum>(std::move(weights), normalize ? weight_sum : 1.0);
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
