// NearSwap (alchemonaut): interpolates from the base toward the other model only where the two
// are close: weight = clamp(t / |base − model|, 0, 1) per element, lerp(base, model, weight).
#include "methods/methods.h"
#include "methods/reference.h"

#include <algorithm>
#include <cmath>
#include <memory>

namespace weld {
namespace {

// Element by element: out[j] needs base[j] and model[j] alone.
void near_swap(double t, std::span<const float> base, std::span<const float> model, std::span<float> out) {
	for (size_t j = 0; j < out.size(); ++j) {
		// mergekit clamps the distance at 1e-6 so equal values do not divide by zero.
		const double distance = std::max(std::fabs(static_cast<double>(base[j]) - model[j]), 1e-6);
		const double weight = std::clamp(t / distance, 0.0, 1.0);
		out[j] = static_cast<float>(weight * model[j] + (1 - weight) * base[j]);
	}
}

// The streaming form: no statistics.
class NearSwapBlocks final : public BlockMerge {
public:
	NearSwapBlocks(double t, size_t base) : t_(t), base_(base) {}
	int stat_passes() const override { return 0; }
	void observe(int, const Block&, unsigned) override {}
	void end_pass(int) override {}
	void merge(const Block& block, std::span<float> out, unsigned) override {
		near_swap(t_, block.sources[base_], block.sources[1 - base_], out);
	}

private:
	double t_;
	size_t base_;
};

class NearSwapMethod final : public MergeMethod, public WholeTensorReference {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const auto base_index = static_cast<size_t>(input.base_index);
		near_swap(global_param(info_, input, "t"), input.sources[base_index], input.sources[1 - base_index], out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t,
	                                        unsigned) const override {
		check_source_count(info_, input, source_count);
		return std::make_unique<NearSwapBlocks>(global_param(info_, input, "t"), static_cast<size_t>(input.base_index));
	}

private:
	MethodInfo info_{
	    .name = "nearswap",
	    .description = "Takes the other model's values where they are within t of the base, interpolates elsewhere",
	    .reference = "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
	    .global_params = {{.name = "t",
	                       .required = true,
	                       .help = "Distance below which the other model's value is taken whole",
	                       .min_value = 0}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .min_sources = 2,
	    .max_sources = 2,
	};
};

} // namespace

const MergeMethod& nearswap_method() {
	static const NearSwapMethod method;
	return method;
}

} // namespace weld
