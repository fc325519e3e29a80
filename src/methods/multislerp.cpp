// Multi-SLERP, mergekit's barycentric interpolation on the hypersphere: the models (or their
// task vectors, with a base) are projected onto the unit sphere, averaged in the tangent space
// at their normalized weighted mean, mapped back, and scaled by the weighted mean of their norms.
//
// Streamed: every step of that is a linear combination of the points, so one statistics pass
// sums their dot products (the Gram matrix), the steps run on coefficients, and the output pass
// combines each element's points with them.
#include "methods/methods.h"
#include "methods/reference.h"
#include "tensor/block_gram.h"
#include "tensor/spherical.h"
#include "util/error.h"

#include <cmath>
#include <fmt/format.h>
#include <memory>
#include <optional>

namespace weld {
namespace {

// Point i is models[i] − base (in double), or models[i] without a base. One statistics pass sums
// the points' dot products; the output is Σ coefficient_i · point_i, scaled, plus the base.
class MultiSlerpBlocks final : public BlockMerge {
public:
	MultiSlerpBlocks(std::string_view tensor_name, std::vector<size_t> models, std::optional<size_t> base,
	                 std::vector<double> weights, double eps, uint64_t elements)
	    : name_(tensor_name), models_(models), base_(base), weights_(std::move(weights)), eps_(eps),
	      gram_(std::move(models), base, block_count(elements)) {}

	int stat_passes() const override { return 1; }
	void observe(int, const Block& block, unsigned) override { gram_.observe(block.index, block.sources); }
	void end_pass(int) override;
	void merge(const Block& block, std::span<float> out, unsigned) override;

private:
	double point(const Block& block, size_t i, size_t j) const {
		return static_cast<double>(block.sources[models_[i]][j]) - (base_ ? block.sources[*base_][j] : 0.0);
	}

	std::string name_; // for messages
	std::vector<size_t> models_;
	std::optional<size_t> base_;
	std::vector<double> weights_;
	double eps_;
	BlockGram gram_;
	bool linear_ = false;              // mergekit's fallback for a zero mean of two models
	std::vector<double> coefficients_; // of the points, for the unit result
	double scale_ = 0;
};

// The whole-tensor steps (unit_mean, project_back) on coefficients of the points: a vector
// Σ x_i·p_i has squared length xᵀGx and dot products G·x with the points.
void MultiSlerpBlocks::end_pass(int) {
	const Gram gram = gram_.combine();
	const size_t count = models_.size();
	std::vector<double> norms(count), mean(count);
	for (size_t i = 0; i < count; ++i) {
		norms[i] = std::sqrt(gram[i][i]);
		mean[i] = weights_[i] / (norms[i] + eps_);
	}
	const double mean_norm = std::sqrt(squared_length(gram, mean));
	if (mean_norm < eps_) {
		if (count != 2)
			throw Error(fmt::format("tensor '{}': multislerp's weighted mean of the unit vectors is zero "
			                        "(antipodal models with balancing weights); change the weights",
			                        name_));
		linear_ = true;
		return;
	}
	for (double& m : mean)
		m /= mean_norm;
	const std::vector<double> mean_dots = gram_times(gram, mean);
	double projection = 0; // Σ w_i · (unit point i · mean)
	for (size_t i = 0; i < count; ++i)
		projection += weights_[i] * (mean_dots[i] / (norms[i] + eps_));
	std::vector<double> tangent(count);
	for (size_t i = 0; i < count; ++i)
		tangent[i] = weights_[i] / (norms[i] + eps_) - projection * mean[i];
	const double tangent_norm = std::sqrt(squared_length(gram, tangent)) + eps_;
	const double c = std::cos(tangent_norm), s = std::sin(tangent_norm) / tangent_norm;
	coefficients_.resize(count);
	for (size_t i = 0; i < count; ++i) {
		coefficients_[i] = mean[i] * c + tangent[i] * s;
		scale_ += norms[i] * weights_[i];
	}
}

void MultiSlerpBlocks::merge(const Block& block, std::span<float> out, unsigned) {
	for (size_t j = 0; j < out.size(); ++j) {
		const double base = base_ ? block.sources[*base_][j] : 0.0;
		if (linear_) {
			out[j] = static_cast<float>(base + weights_[0] * point(block, 0, j) + weights_[1] * point(block, 1, j));
			continue;
		}
		double unit = 0;
		for (size_t i = 0; i < models_.size(); ++i)
			unit += coefficients_[i] * point(block, i, j);
		out[j] = static_cast<float>(unit * scale_ + base);
	}
}

// One model (or an empty tensor): mergekit returns the model as it is.
class CopyModelBlocks final : public BlockMerge {
public:
	explicit CopyModelBlocks(size_t model) : model_(model) {}
	int stat_passes() const override { return 0; }
	void observe(int, const Block&, unsigned) override {}
	void end_pass(int) override {}
	void merge(const Block& block, std::span<float> out, unsigned) override {
		std::copy(block.sources[model_].begin(), block.sources[model_].end(), out.begin());
	}

private:
	size_t model_;
};

class MultiSlerpMethod final : public MergeMethod, public WholeTensorReference {
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
		if (models.empty())
			throw Error(fmt::format("tensor '{}': multislerp needs a model besides the base", input.tensor_name));
		if (models.size() == 1 || elements == 0) return std::make_unique<CopyModelBlocks>(models[0]);
		std::vector<double> weights = model_weights(input, models);
		std::optional<size_t> base;
		if (input.base_index >= 0) base = static_cast<size_t>(input.base_index);
		return std::make_unique<MultiSlerpBlocks>(input.tensor_name, std::move(models), base, std::move(weights),
		                                          global_param(info_, input, "eps"), elements);
	}

	// The whole-tensor form, kept as the reference of the streamed one.
	void merge_whole(const MergeInput& input, std::span<float> out) const override {
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
