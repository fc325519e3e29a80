// NuSLERP, mergekit's generalised slerp: two models interpolated on the sphere with
// t = w2 / (w1 + w2), over the whole tensor (nuslerp_flatten), its rows, or its columns
// (nuslerp_row_wise). With a base model the two task vectors are slerped and added to it.
#include "methods/methods.h"
#include "tensor/spherical.h"
#include "util/error.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

namespace weld {
namespace {

// mergekit's thresholds: norms clamped below 1e-7, lerp where sin(theta) < 1e-8.
constexpr double kNormFloor = 1e-7;
constexpr double kColinear = 1e-8;

class NuSlerpMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const std::vector<size_t> models = model_indices(input);
		if (models.size() != 2)
			throw Error(fmt::format("tensor '{}': nuslerp merges exactly two models (plus an optional base model), "
			                        "got {}",
			                        input.tensor_name, models.size()));
		const double w0 = *source_param(info_, input, models[0], "weight");
		const double w1 = *source_param(info_, input, models[1], "weight");
		const double t = std::fabs(w0 + w1) < 1e-6 ? 0.5 : w1 / (w0 + w1);

		const bool flatten = global_param(info_, input, "nuslerp_flatten") != 0;
		const bool row_wise = global_param(info_, input, "nuslerp_row_wise") != 0;
		const VectorLayout layout = flatten    ? VectorLayout::whole(out.size())
		                            : row_wise ? VectorLayout::columns(input.tensor_name, input.shape, out.size())
		                                       : VectorLayout::rows(input.tensor_name, input.shape, out.size());
		const float* base =
		    input.base_index >= 0 ? input.sources[static_cast<size_t>(input.base_index)].data() : nullptr;
		std::vector<float> v0(layout.length), v1(layout.length);
		for (size_t v = 0; v < layout.count; ++v) {
			for (size_t k = 0; k < layout.length; ++k) {
				const size_t j = layout.at(v, k);
				const float origin = base ? base[j] : 0.0f;
				v0[k] = input.sources[models[0]][j] - origin;
				v1[k] = input.sources[models[1]][j] - origin;
			}
			const auto [c0, c1] = coefficients(v0, v1, t);
			for (size_t k = 0; k < layout.length; ++k) {
				const size_t j = layout.at(v, k);
				out[j] = static_cast<float>((base ? base[j] : 0.0) + c0 * v0[k] + c1 * v1[k]);
			}
		}
	}

private:
	static std::pair<double, double> coefficients(std::span<const float> v0, std::span<const float> v1, double t) {
		const double cos =
		    dot_product(v0, v1) / (std::max(euclidean_norm(v0), kNormFloor) * std::max(euclidean_norm(v1), kNormFloor));
		const double theta = std::acos(std::clamp(cos, -1.0, 1.0));
		const double sin_theta = std::sin(theta);
		if (std::fabs(sin_theta) < kColinear) return {1 - t, t};
		return {std::sin((1 - t) * theta) / sin_theta, std::sin(t * theta) / sin_theta};
	}

	MethodInfo info_{
	    .name = "nuslerp",
	    .description = "Spherical interpolation of two models (or their task vectors) weighted by their weights",
	    .reference = "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
	    .global_params = {{.name = "nuslerp_flatten",
	                       .type = ParamType::Bool,
	                       .default_value = 1,
	                       .help = "Treat the whole tensor as one vector"},
	                      {.name = "nuslerp_row_wise",
	                       .type = ParamType::Bool,
	                       .default_value = 0,
	                       .help = "Without flatten: slerp columns (vectors along the first dimension), not rows"}},
	    .model_params = {{.name = "weight", .required = true, .help = "Relative weight; t = w2 / (w1 + w2)"}},
	    .base = BaseModel::Optional,
	    .min_sources = 2,
	    .max_sources = 3,
	};
};

} // namespace

const MergeMethod& nuslerp_method() {
	static const NuSlerpMethod method;
	return method;
}

} // namespace weld
