// Model Stock (Jang et al. 2024) as mergekit computes it: the average of the N fine-tuned
// models is pulled toward the base by t = N·cosθ / (1 + (N−1)·cosθ), where cosθ is the mean
// cosine between every pair of task vectors (model − base). filter_wise: one t per row.
#include "methods/methods.h"
#include "methods/reference.h"
#include "tensor/spherical.h"
#include "util/error.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <memory>
#include <string>

namespace weld {
namespace {

// t from the pairwise cosines of the task vectors: norms[i] and dots[a][b] (a < b).
double interpolation_from(std::string_view tensor_name, const std::vector<double>& norms,
                          const std::vector<std::vector<double>>& dots) {
	const size_t count = norms.size();
	double cos_sum = 0;
	for (size_t a = 0; a < count; ++a)
		for (size_t b = a + 1; b < count; ++b)
			cos_sum += std::clamp(dots[a][b] / std::max(norms[a] * norms[b], 1e-6), -1.0, 1.0);
	const double cos = cos_sum / static_cast<double>(count * (count - 1) / 2);
	const double n = static_cast<double>(count);
	const double denominator = 1 + (n - 1) * cos;
	// Only for task vectors pointing exactly apart on average (mergekit writes inf/NaN).
	if (denominator == 0)
		throw Error(fmt::format("tensor '{}': model_stock task vectors have mean cosine {:g}, which makes t "
		                        "infinite",
		                        tensor_name, cos));
	return n * cos / denominator;
}

// out[j] = t * mean of the models at j + (1 - t) * base[j].
void pull_toward_base(double t, const std::vector<std::span<const float>>& models, std::span<const float> base,
                      std::span<float> out) {
	for (size_t j = 0; j < out.size(); ++j) {
		double sum = 0;
		for (const auto& m : models)
			sum += m[j];
		const double mean = sum / static_cast<double>(models.size());
		out[j] = static_cast<float>(t * mean + (1 - t) * base[j]);
	}
}

// The streaming form for one t per tensor (filter_wise false). Statistics pass: every task
// vector's squared norm and pairwise dot products per block, summed in block order; the
// output pass pulls the mean toward the base.
class ModelStockBlocks final : public BlockMerge {
public:
	ModelStockBlocks(std::string_view tensor_name, std::vector<size_t> models, size_t base, uint64_t elements,
	                 unsigned workers)
	    : name_(tensor_name), models_(std::move(models)), base_(base),
	      partials_(block_count(elements), std::vector<double>(models_.size() * models_.size())),
	      scratch_(workers, std::vector<float>(models_.size() * kBlockElements)) {}

	int stat_passes() const override { return 1; }

	void observe(int, const Block& block, unsigned worker) override {
		float* scratch = scratch_[worker].data();
		const size_t count = models_.size(), size = block.size();
		const std::span<const float> base = block.sources[base_];
		for (size_t i = 0; i < count; ++i)
			for (size_t j = 0; j < size; ++j)
				scratch[i * kBlockElements + j] = block.sources[models_[i]][j] - base[j];
		std::vector<double>& partial = partials_[block.index];
		for (size_t a = 0; a < count; ++a)
			for (size_t b = a; b < count; ++b) {
				double sum = 0;
				for (size_t j = 0; j < size; ++j)
					sum += static_cast<double>(scratch[a * kBlockElements + j]) * scratch[b * kBlockElements + j];
				partial[a * count + b] = sum;
			}
	}

	void end_pass(int) override {
		const size_t count = models_.size();
		std::vector<double> norms(count);
		std::vector<std::vector<double>> dots(count, std::vector<double>(count));
		for (size_t a = 0; a < count; ++a)
			for (size_t b = a; b < count; ++b) {
				double sum = 0;
				for (const auto& partial : partials_)
					sum += partial[a * count + b];
				dots[a][b] = sum;
			}
		for (size_t a = 0; a < count; ++a)
			norms[a] = std::sqrt(dots[a][a]);
		t_ = interpolation_from(name_, norms, dots);
		partials_ = {};
	}

	std::vector<std::string> notes() const override { return {fmt::format("model_stock t = {:.6g}", t_)}; }

	void merge(const Block& block, std::span<float> out, unsigned) override {
		std::vector<std::span<const float>> models;
		for (size_t i : models_)
			models.push_back(block.sources[i]);
		pull_toward_base(t_, models, block.sources[base_], out);
	}

private:
	std::string name_; // for messages
	std::vector<size_t> models_;
	size_t base_;
	std::vector<std::vector<double>> partials_; // per block: count x count sums (upper triangle)
	std::vector<std::vector<float>> scratch_;   // per worker: a block of each task vector
	double t_ = 0;
};

class ModelStockMethod final : public MergeMethod, public WholeTensorReference {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		if (auto kernel = block_merge(input, input.sources.size(), out.size(), 1)) {
			merge_in_blocks(*kernel, input, out);
			return;
		}
		merge_whole(input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned workers) const override {
		check_source_count(info_, input, source_count);
		if (global_param(info_, input, "filter_wise") != 0) return nullptr; // rows of their own t: whole tensors
		std::vector<size_t> models = model_indices(input, source_count);
		return std::make_unique<ModelStockBlocks>(input.tensor_name, std::move(models),
		                                          static_cast<size_t>(input.base_index), elements,
		                                          std::max(1u, workers));
	}

	// The whole-tensor form, kept as the reference of the streamed one (and used for filter_wise):
	// the same but for the dot products, summed over the whole tensor here, per block in block
	// order there.
	void merge_whole(const MergeInput& input, std::span<float> out) const override {
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
