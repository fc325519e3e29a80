// Multi-SLERP, mergekit's barycentric interpolation on the hypersphere: the models (or their
// task vectors, with a base) are projected onto the unit sphere, averaged in the tangent space
// at their normalized weighted mean, mapped back, and scaled by the weighted mean of their norms.
#include "methods/methods.h"
#include "tensor/spherical.h"
#include "util/error.h"

#include <cmath>
#include <fmt/format.h>

namespace weld {
namespace {

class MultiSlerpMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const std::vector<size_t> models = model_indices(input);
		if (models.empty())
			throw Error(fmt::format("tensor '{}': multislerp needs a model besides the base", input.tensor_name));
		if (models.size() == 1 || out.empty()) { // mergekit returns the one model as it is
			std::copy(input.sources[models[0]].begin(), input.sources[models[0]].end(), out.begin());
			return;
		}
		const double eps = global_param(info_, input, "eps");
		const std::vector<double> weights = model_weights(input, models);
		const float* base =
		    input.base_index >= 0 ? input.sources[static_cast<size_t>(input.base_index)].data() : nullptr;
		const size_t count = models.size(), n = out.size();
		// Model i's vector: model − base, recomputed where needed instead of copied.
		const Points points{input, models, base};
		std::vector<double> norms(count);
		for (size_t i = 0; i < count; ++i) {
			for (size_t j = 0; j < n; ++j)
				norms[i] += points(i, j) * points(i, j);
			norms[i] = std::sqrt(norms[i]);
		}
		std::vector<double> mean = unit_mean(points, norms, weights, n, eps);
		const double mean_norm = euclidean_norm(mean);
		if (mean_norm < eps) {
			if (count != 2)
				throw Error(fmt::format("tensor '{}': multislerp's weighted mean of the unit vectors is zero "
				                        "(antipodal models with balancing weights); change the weights",
				                        input.tensor_name));
			for (size_t j = 0; j < n; ++j) // mergekit falls back to linear interpolation
				out[j] =
				    static_cast<float>((base ? base[j] : 0.0) + weights[0] * points(0, j) + weights[1] * points(1, j));
			return;
		}
		for (double& m : mean)
			m /= mean_norm;
		project_back(points, norms, weights, mean, eps);
		double scale = 0; // the weighted mean of the norms
		for (size_t i = 0; i < count; ++i)
			scale += norms[i] * weights[i];
		for (size_t j = 0; j < n; ++j)
			out[j] = static_cast<float>(mean[j] * scale + (base ? base[j] : 0.0));
	}

private:
	struct Points {
		const MergeInput& input;
		const std::vector<size_t>& models;
		const float* base;
		double operator()(size_t i, size_t j) const {
			return static_cast<double>(input.sources[models[i]][j]) - (base ? base[j] : 0.0);
		}
	};

	// Σ wᵢ·vᵢ/(‖vᵢ‖ + eps): the weighted mean of the points projected onto the unit sphere.
	static std::vector<double> unit_mean(const Points& points, const std::vector<double>& norms,
	                                     const std::vector<double>& weights, size_t n, double eps) {
		std::vector<double> mean(n, 0.0);
		for (size_t i = 0; i < norms.size(); ++i)
			for (size_t j = 0; j < n; ++j)
				mean[j] += weights[i] * points(i, j) / (norms[i] + eps);
		return mean;
	}

	std::vector<double> model_weights(const MergeInput& input, const std::vector<size_t>& models) const {
		std::vector<double> weights;
		double sum = 0;
		for (size_t i : models) {
			weights.push_back(*source_param(info_, input, i, "weight"));
			sum += weights.back();
		}
		if (global_param(info_, input, "normalize_weights") == 0) return weights;
		if (sum == 0) // mergekit would write NaN
			throw Error(fmt::format("tensor '{}': multislerp weights sum to zero and normalize_weights is on",
			                        input.tensor_name));
		for (double& w : weights)
			w /= sum;
		return weights;
	}

	// Replaces `mean` (unit length) by the exponential map of the weighted tangent vectors there.
	// As in mergekit: the tangent vectors' weighted sum is zero up to rounding, since the tangent
	// space is taken at the normalized weighted mean itself, so the result is ~ the mean.
	static void project_back(const Points& points, const std::vector<double>& norms, const std::vector<double>& weights,
	                         std::vector<double>& mean, double eps) {
		const size_t count = norms.size(), n = mean.size();
		std::vector<double> dots(count, 0.0);
		for (size_t i = 0; i < count; ++i)
			for (size_t j = 0; j < n; ++j)
				dots[i] += points(i, j) / (norms[i] + eps) * mean[j];
		const auto tangent = [&](size_t j) {
			double sum = 0;
			for (size_t i = 0; i < count; ++i)
				sum += weights[i] * (points(i, j) / (norms[i] + eps) - dots[i] * mean[j]);
			return sum;
		};
		double tangent_norm = 0;
		for (size_t j = 0; j < n; ++j) {
			const double tj = tangent(j);
			tangent_norm += tj * tj;
		}
		tangent_norm = std::sqrt(tangent_norm) + eps;
		const double c = std::cos(tangent_norm), s = std::sin(tangent_norm) / tangent_norm;
		for (size_t j = 0; j < n; ++j) {
			const double tj = tangent(j);
			mean[j] = mean[j] * c + tj * s;
		}
	}

	MethodInfo info_{
	    .name = "multislerp",
	    .description = "Spherical barycentre of several models (or task vectors) via the tangent space",
	    .reference = "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
	    .global_params = {{.name = "normalize_weights",
	                       .type = ParamType::Bool,
	                       .default_value = 1,
	                       .help = "Divide the weights by their sum"},
	                      {.name = "eps",
	                       .default_value = 1e-8,
	                       .help = "Small constant added to norms for numerical stability",
	                       .min_value = 0}},
	    .model_params = {{.name = "weight", .required = true, .help = "Weight of this model"}},
	    .base = BaseModel::Optional,
	};
};

} // namespace

const MergeMethod& multislerp_method() {
	static const MultiSlerpMethod method;
	return method;
}

} // namespace weld
