// OTA merging and Fast Fisher Grafting (Mahdavinia et al. 2025, "Harnessing Optimization
// Dynamics for Curvature-Informed Model Merging"): the Adam second moments v_i that each
// fine-tune's optimizer saved (`weld train --save-optimizer`) serve as a diagonal curvature, and
// the models are averaged element by element with precision weights
//   w_i = (v_i^power, divided by its mean when normalise) + epsilon,   θ = Σ w_i θ_i / Σ w_i.
// FFG first grafts each model onto the base: of τ_i = θ_i − θ_base it keeps the `density`
// fraction with the largest saliency v_i ⊙ τ_i² per tensor and resets the rest to the base
// (weight 0 there); an element every model reset keeps the base's value.
#include "methods/methods.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <fmt/format.h>

#include <cmath>

namespace weld {
namespace {

class OtaMethod final : public MergeMethod {
public:
	OtaMethod(std::string name, double density, BaseModel base, std::string description)
	    : info_{.name = std::move(name),
	            .description = std::move(description),
	            .reference = "https://arxiv.org/abs/2509.11167",
	            .global_params =
	                {{.name = "power",
	                  .default_value = 0.5,
	                  .help = "Exponent of the second moments (0.5: Adam's preconditioner √v)",
	                  .min_value = 0,
	                  .min_exclusive = true},
	                 {.name = "epsilon", .default_value = 1e-8, .help = "Added to every weight", .min_value = 0},
	                 {.name = "normalise",
	                  .type = ParamType::Bool,
	                  .default_value = 0,
	                  .help = "Divide each model's v^power by its mean over the tensor"}},
	            .model_params = {{.name = "density",
	                              .default_value = density,
	                              .help = "Fraction of τ kept by saliency v⊙τ² (FFG; 1: no grafting, needs no base)",
	                              .min_value = 0,
	                              .max_value = 1},
	                             {.name = "stats",
	                              .type = ParamType::Text,
	                              .required = true,
	                              .has_default = false,
	                              .help = "The model's optimizer/ folder from weld train --save-optimizer"}},
	            .base = base,
	            .statistics = "exp_avg_sq"} {}

	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const double power = global_param(info_, input, "power"), epsilon = global_param(info_, input, "epsilon");
		const bool normalise = global_param(info_, input, "normalise") != 0;
		const auto models = model_indices(input);
		const size_t n = out.size();
		// Each model's weights in float32 (K tensors' worth), then one pass summing in float64.
		std::vector<std::vector<float>> weights(models.size(), std::vector<float>(n));
		std::vector<float> saliency;
		for (size_t k = 0; k < models.size(); ++k) {
			const size_t i = models[k];
			const auto v = input.statistics.size() > i ? input.statistics[i] : std::span<const float>();
			if (v.size() != n)
				throw Error(fmt::format("tensor '{}': model {} has no second moments for it", input.tensor_name, i));
			auto& weight = weights[k];
			double mean = 0;
			for (size_t j = 0; j < n; ++j) {
				weight[j] = static_cast<float>(std::pow(std::max(0.0f, v[j]), power));
				mean += weight[j] / static_cast<double>(n);
			}
			const double scale = normalise ? 1.0 / (mean + epsilon) : 1.0;
			for (size_t j = 0; j < n; ++j)
				weight[j] = static_cast<float>(weight[j] * scale + epsilon);
			graft(input, i, v, weight, saliency);
		}
		for (size_t j = 0; j < n; ++j) {
			double num = 0, den = 0;
			for (size_t k = 0; k < models.size(); ++k) {
				num += static_cast<double>(weights[k][j]) * input.sources[models[k]][j];
				den += weights[k][j];
			}
			out[j] = den > 0 ? static_cast<float>(num / den) : fallback(input, models, j);
		}
	}

private:
	// Where no model has weight (all grafted away, or epsilon 0 and v 0): the base, else the mean.
	static float fallback(const MergeInput& input, const std::vector<size_t>& models, size_t j) {
		if (input.base_index >= 0) return input.sources[static_cast<size_t>(input.base_index)][j];
		double sum = 0;
		for (size_t i : models)
			sum += input.sources[i][j];
		return static_cast<float>(sum / static_cast<double>(models.size()));
	}

	// FFG: zero the weight of every element outside the top `density` by v ⊙ τ².
	void graft(const MergeInput& input, size_t i, std::span<const float> v, std::vector<float>& weight,
	           std::vector<float>& saliency) const {
		const double density = *source_param(info_, input, i, "density");
		if (density >= 1) return;
		if (input.base_index < 0)
			throw Error(fmt::format("tensor '{}': method '{}': density < 1 grafts onto the base: set base_model",
			                        input.tensor_name, info_.name));
		const auto theta = input.sources[i], base = input.sources[static_cast<size_t>(input.base_index)];
		saliency.resize(theta.size());
		for (size_t j = 0; j < theta.size(); ++j) {
			const double tau = static_cast<double>(theta[j]) - base[j];
			saliency[j] = static_cast<float>(v[j] * tau * tau);
		}
		keep_top_k_by_magnitude(saliency,
		                        static_cast<size_t>(std::llround(density * static_cast<double>(theta.size()))));
		for (size_t j = 0; j < theta.size(); ++j)
			if (saliency[j] == 0) weight[j] = 0;
	}

	MethodInfo info_;
};

} // namespace

const MergeMethod& ota_method() {
	static const OtaMethod method("ota", 1.0, BaseModel::Optional,
	                              "Precision-weighted average by each fine-tune's Adam second moments (weld train "
	                              "--save-optimizer)");
	return method;
}

const MergeMethod& ffg_method() {
	static const OtaMethod method("ffg", 0.2, BaseModel::Required,
	                              "Fast Fisher Grafting: each task vector cut to its top v⊙τ² entries, then OTA's "
	                              "precision-weighted average");
	return method;
}

} // namespace weld
