// Spherical linear interpolation between the base and one other model, treating each tensor
// as one vector (as mergekit does); nearly parallel tensors fall back to linear interpolation.
#include "methods/methods.h"

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

constexpr double kDotThreshold = 0.9995;
constexpr double kEps = 1e-8;

// Norm of v, or 1 when it is too small to normalize by (mergekit leaves such vectors as they are).
double normalizer(std::span<const float> v) {
	double sum = 0;
	for (float x : v)
		sum += static_cast<double>(x) * x;
	const double norm = std::sqrt(sum);
	return norm > kEps ? norm : 1.0;
}

class SlerpMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const double t = global_param(info_, input, "t");
		const auto base_index = static_cast<size_t>(input.base_index);
		const std::span<const float> v0 = input.sources[base_index];
		const std::span<const float> v1 = input.sources[1 - base_index];

		double dot = 0;
		for (size_t j = 0; j < v0.size(); ++j)
			dot += static_cast<double>(v0[j]) * v1[j];
		dot /= normalizer(v0) * normalizer(v1);

		double s0 = 1 - t, s1 = t; // lerp
		if (std::fabs(dot) <= kDotThreshold) {
			const double theta0 = std::acos(std::clamp(dot, -1.0, 1.0));
			const double sin_theta0 = std::sin(theta0);
			s0 = std::sin(theta0 - t * theta0) / sin_theta0;
			s1 = std::sin(t * theta0) / sin_theta0;
		}
		for (size_t j = 0; j < out.size(); ++j)
			out[j] = static_cast<float>(s0 * v0[j] + s1 * v1[j]);
	}

private:
	MethodInfo info_{
	    .name = "slerp",
	    .description = "Spherical interpolation between the base model and one other model",
	    .reference = "https://en.wikipedia.org/wiki/Slerp",
	    .global_params = {{.name = "t",
	                       .required = true,
	                       .help = "Interpolation factor: 0 gives the base, 1 the other"}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .min_sources = 2,
	    .max_sources = 2,
	};
};

} // namespace

const MergeMethod& slerp_method() {
	static const SlerpMethod method;
	return method;
}

} // namespace weld
