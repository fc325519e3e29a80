// Model Stock (Jang et al. 2024) as mergekit computes it: the average of the N fine-tuned
// models is pulled toward the base by t = N·cosθ / (1 + (N−1)·cosθ), where cosθ is the mean
// cosine between every pair of task vectors (model − base). filter_wise: one t per row.
#include "methods/methods.h"
#include "tensor/spherical.h"
#include "util/error.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

namespace weld {
namespace {

class ModelStockMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const bool filter_wise = global_param(info_, input, "filter_wise") != 0;
		const auto base_index = static_cast<size_t>(input.base_index);
		std::vector<std::span<const float>> models;
		for (size_t i = 0; i < input.sources.size(); ++i)
			if (i != base_index) models.push_back(input.sources[i]);
		const std::span<const float> base = input.sources[base_index];
		// mergekit treats a 1-D tensor as one row, else rows run along the last dimension.
		const VectorLayout layout = filter_wise ? VectorLayout::rows(input.tensor_name, input.shape, out.size())
		                                        : VectorLayout::whole(out.size());
		for (size_t r = 0; r < layout.count; ++r) {
			const size_t first = r * layout.vector_stride, n = layout.length;
			std::vector<std::span<const float>> row;
			for (const auto& m : models)
				row.push_back(m.subspan(first, n));
			const double t = interpolation(input, row, base.subspan(first, n));
			for (size_t j = first; j < first + n; ++j) {
				double sum = 0;
				for (const auto& m : models)
					sum += m[j];
				const double mean = sum / static_cast<double>(models.size());
				out[j] = static_cast<float>(t * mean + (1 - t) * base[j]);
			}
			if (input.notes && !filter_wise) input.notes->push_back(fmt::format("model_stock t = {:.6g}", t));
		}
	}

private:
	// t for one row (or the whole tensor) from the pairwise cosines of the task vectors.
	double interpolation(const MergeInput& input, const std::vector<std::span<const float>>& models,
	                     std::span<const float> base) const {
		const size_t count = models.size();
		std::vector<std::vector<float>> deltas(count, std::vector<float>(base.size()));
		std::vector<double> norms(count);
		for (size_t i = 0; i < count; ++i) {
			for (size_t j = 0; j < base.size(); ++j)
				deltas[i][j] = models[i][j] - base[j];
			norms[i] = euclidean_norm(deltas[i]);
		}
		double cos_sum = 0;
		for (size_t a = 0; a < count; ++a)
			for (size_t b = a + 1; b < count; ++b)
				cos_sum +=
				    std::clamp(dot_product(deltas[a], deltas[b]) / std::max(norms[a] * norms[b], 1e-6), -1.0, 1.0);
		const double cos = cos_sum / static_cast<double>(count * (count - 1) / 2);
		const double n = static_cast<double>(count);
		const double denominator = 1 + (n - 1) * cos;
		// Only for task vectors pointing exactly apart on average (mergekit writes inf/NaN).
		if (denominator == 0)
			throw Error(fmt::format("tensor '{}': model_stock task vectors have mean cosine {:g}, which makes t "
			                        "infinite",
			                        input.tensor_name, cos));
		return n * cos / denominator;
	}

	MethodInfo info_{
	    .name = "model_stock",
	    .description = "Average of the models pulled toward the base by the angle between their task vectors",
	    .reference = "https://arxiv.org/abs/2403.19522",
	    .global_params = {{.name = "filter_wise",
	                       .type = ParamType::Bool,
	                       .default_value = 0,
	                       .help = "One interpolation factor per row instead of per tensor"}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .min_sources = 3,
	    .max_sources = 0,
	};
};

} // namespace

const MergeMethod& model_stock_method() {
	static const ModelStockMethod method;
	return method;
}

} // namespace weld
