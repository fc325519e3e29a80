// NearSwap (alchemonaut): interpolates from the base toward the other model only where the two
// are close: weight = clamp(t / |base − model|, 0, 1) per element, lerp(base, model, weight).
#include "methods/methods.h"

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

class NearSwapMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const double t = global_param(info_, input, "t");
		const auto base_index = static_cast<size_t>(input.base_index);
		const std::span<const float> base = input.sources[base_index];
		const std::span<const float> model = input.sources[1 - base_index];
		for (size_t j = 0; j < out.size(); ++j) {
			// mergekit clamps the distance at 1e-6 so equal values do not divide by zero.
			const double distance = std::max(std::fabs(static_cast<double>(base[j]) - model[j]), 1e-6);
			const double weight = std::clamp(t / distance, 0.0, 1.0);
			out[j] = static_cast<float>(weight * model[j] + (1 - weight) * base[j]);
		}
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
