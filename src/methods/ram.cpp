// Reinforced Agent Merging (RAM) and its tensor-local RAM+ variant, as mergekit computes them:
// per element, a task vector counts when |model − base| > epsilon; an element changed by one
// model takes that change whole, one changed by several takes their mean. RAM+ scales each
// model's unique changes by 1 + r·clip(shared/unique, 0, alpha), counted over the tensor.
#include "methods/methods.h"

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

class RamMethod final : public MergeMethod {
public:
	RamMethod(std::string name, std::string description, bool plus) : plus_(plus) {
		info_ = {
		    .name = std::move(name),
		    .description = std::move(description),
		    .reference = "https://arxiv.org/abs/2601.13572",
		    .global_params = {{.name = "epsilon",
		                       .default_value = 1e-5,
		                       .help = "A change counts when its magnitude exceeds this",
		                       .min_value = 0}},
		    .model_params = {},
		    .base = BaseModel::Required,
		};
		if (plus_) {
			info_.global_params.push_back(
			    {.name = "r", .default_value = 0.1, .help = "Strength of the unique-change rescaling", .min_value = 0});
			info_.global_params.push_back(
			    {.name = "alpha", .default_value = 0.2, .help = "Cap on the shared/unique ratio", .min_value = 0});
		}
	}

	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const double epsilon = global_param(info_, input, "epsilon");
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		std::vector<std::span<const float>> models;
		for (size_t i = 0; i < input.sources.size(); ++i)
			if (static_cast<int>(i) != input.base_index) models.push_back(input.sources[i]);
		const auto delta = [&](size_t i, size_t j) { return models[i][j] - base[j]; };
		const auto active = [&](size_t i, size_t j) { return std::fabs(delta(i, j)) > epsilon; };
		const auto active_count = [&](size_t j) {
			size_t count = 0;
			for (size_t i = 0; i < models.size(); ++i)
				count += active(i, j);
			return count;
		};
		std::vector<double> unique_scale(models.size(), 1.0);
		if (plus_) unique_scale = plus_scales(input, models.size(), active, active_count, epsilon);
		for (size_t j = 0; j < out.size(); ++j) {
			const size_t count = active_count(j);
			double sum = 0;
			for (size_t i = 0; i < models.size(); ++i)
				if (active(i, j)) sum += count == 1 ? unique_scale[i] * delta(i, j) : delta(i, j) / count;
			out[j] = static_cast<float>(base[j] + sum);
		}
	}

private:
	// RAM+'s λ per model: 1 + r·clip(ρ, 0, alpha), ρ = its shared changes / its unique changes
	// (unique clamped below at epsilon, as mergekit does).
	template <typename Active, typename Count>
	std::vector<double> plus_scales(const MergeInput& input, size_t models, const Active& active,
	                                const Count& active_count, double epsilon) const {
		const double r = global_param(info_, input, "r"), alpha = global_param(info_, input, "alpha");
		std::vector<double> shared(models, 0.0), unique(models, 0.0), scales(models);
		for (size_t j = 0; j < input.sources[0].size(); ++j) {
			const size_t count = active_count(j);
			for (size_t i = 0; i < models; ++i)
				if (active(i, j)) (count == 1 ? unique : shared)[i] += 1;
		}
		for (size_t i = 0; i < models; ++i)
			scales[i] = 1 + r * std::clamp(shared[i] / std::max(unique[i], epsilon), 0.0, alpha);
		return scales;
	}

	bool plus_;
	MethodInfo info_;
};

} // namespace

const MergeMethod& ram_method() {
	static const RamMethod method("ram", "Per element: a change made by one model taken whole, shared ones averaged",
	                              false);
	return method;
}

const MergeMethod& ramplus_tl_method() {
	static const RamMethod method(
	    "ramplus_tl", "RAM with each model's unique changes scaled up by its share of overlapping ones", true);
	return method;
}

} // namespace weld
