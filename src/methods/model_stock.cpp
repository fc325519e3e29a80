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

// filter_wise streams tensors whose rows have at least this many elements.
constexpr size_t kShortestStreamedRow = 64;

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

// Each task vector of block (models[i] - base) into scratch[i * kBlockElements ...].
void task_differences(const Block& block, const std::vector<size_t>& models, size_t base, float* scratch) {
	const std::span<const float> base_values = block.sources[base];
	for (size_t i = 0; i < models.size(); ++i)
		for (size_t j = 0; j < block.size(); ++j)
			scratch[i * kBlockElements + j] = block.sources[models[i]][j] - base_values[j];
}

// sums[a * count + b] (a <= b) = the dot product of task vectors a and b over [begin, end) of
// a block's differences.
void pair_sums(const float* scratch, size_t count, size_t begin, size_t end, double* sums) {
	for (size_t a = 0; a < count; ++a)
		for (size_t b = a; b < count; ++b) {
			double sum = 0;
			for (size_t j = begin; j < end; ++j)
				sum += static_cast<double>(scratch[a * kBlockElements + j]) * scratch[b * kBlockElements + j];
			sums[a * count + b] = sum;
		}
}

// t from the summed pair products (count x count, upper triangle).
double interpolation_from_sums(std::string_view tensor_name, size_t count, const std::vector<double>& sums) {
	std::vector<double> norms(count);
	std::vector<std::vector<double>> dots(count, std::vector<double>(count));
	for (size_t a = 0; a < count; ++a) {
		for (size_t b = a; b < count; ++b)
			dots[a][b] = sums[a * count + b];
		norms[a] = std::sqrt(dots[a][a]);
	}
	return interpolation_from(tensor_name, norms, dots);
}

// The streaming form: one t per row of row_length elements (filter_wise: the last dimension, as
// mergekit; else the whole tensor is one row). The statistics pass keeps each row segment's pair
// products per block; a row's sums add its segments in block order (the same for any thread
// count), and the output pass pulls each row's mean toward the base by the row's own t.
class ModelStockRowBlocks final : public BlockMerge {
public:
	ModelStockRowBlocks(std::string_view tensor_name, std::vector<size_t> models, size_t base, uint64_t elements,
	                    uint64_t row_length, unsigned workers)
	    : name_(tensor_name), models_(std::move(models)), base_(base), row_length_(row_length),
	      rows_(elements / row_length), partials_(block_count(elements)),
	      scratch_(workers, std::vector<float>(models_.size() * kBlockElements)) {}

	int stat_passes() const override { return 1; }

	void observe(int, const Block& block, unsigned worker) override {
		float* scratch = scratch_[worker].data();
		task_differences(block, models_, base_, scratch);
		const size_t pairs = models_.size() * models_.size();
		std::vector<double>& partial = partials_[block.index];
		partial.assign(segment_count(block) * pairs, 0.0);
		for_each_segment(block, [&](size_t segment, uint64_t, size_t begin, size_t end) {
			pair_sums(scratch, models_.size(), begin, end, &partial[segment * pairs]);
		});
	}

	void end_pass(int) override {
		const size_t count = models_.size(), pairs = count * count;
		t_.resize(rows_);
		for (uint64_t row = 0; row < rows_; ++row) {
			std::vector<double> sums(pairs);
			const uint64_t first = row * row_length_, last = first + row_length_ - 1;
			for (uint64_t b = first / kBlockElements; b <= last / kBlockElements; ++b) {
				const uint64_t first_row_of_block = b * kBlockElements / row_length_;
				const double* segment = &partials_[b][(row - first_row_of_block) * pairs];
				for (size_t k = 0; k < pairs; ++k)
					sums[k] += segment[k];
			}
			t_[row] = interpolation_from_sums(name_, count, sums);
		}
		partials_ = {};
	}

	std::vector<std::string> notes() const override {
		if (rows_ != 1) return {};
		return {fmt::format("model_stock t = {:.6g}", t_[0])};
	}

	void merge(const Block& block, std::span<float> out, unsigned) override {
		for_each_segment(block, [&](size_t, uint64_t row, size_t begin, size_t end) {
			std::vector<std::span<const float>> models;
			for (size_t i : models_)
				models.push_back(block.sources[i].subspan(begin, end - begin));
			pull_toward_base(t_[row], models, block.sources[base_].subspan(begin, end - begin),
			                 out.subspan(begin, end - begin));
		});
	}

private:
	size_t segment_count(const Block& block) const {
		return static_cast<size_t>((block.offset + block.size() - 1) / row_length_ - block.offset / row_length_ + 1);
	}

	// fn(segment, row, begin, end) for each row's part [begin, end) of block, in order.
	template <typename Fn> void for_each_segment(const Block& block, const Fn& fn) const {
		const uint64_t first_row = block.offset / row_length_;
		for (size_t segment = 0; segment < segment_count(block); ++segment) {
			const uint64_t row = first_row + segment;
			const uint64_t begin = std::max(row * row_length_, block.offset) - block.offset;
			const uint64_t end = std::min((row + 1) * row_length_, block.offset + block.size()) - block.offset;
			fn(segment, row, static_cast<size_t>(begin), static_cast<size_t>(end));
		}
	}

	std::string name_; // for messages
	std::vector<size_t> models_;
	size_t base_;
	uint64_t row_length_, rows_;
	std::vector<std::vector<double>> partials_; // per block: count x count sums per row segment
	std::vector<std::vector<float>> scratch_;   // per worker: a block of each task vector
	std::vector<double> t_;                     // per row
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
		std::vector<size_t> models = model_indices(input, source_count);
		const auto base = static_cast<size_t>(input.base_index);
		workers = std::max(1u, workers);
		if (global_param(info_, input, "filter_wise") != 0) {
			const VectorLayout rows = VectorLayout::rows(input.tensor_name, input.shape, elements);
			// Short rows would keep more pair sums than values: whole tensors.
			if (rows.count == 0 || rows.length < kShortestStreamedRow) return nullptr;
			return std::make_unique<ModelStockRowBlocks>(input.tensor_name, std::move(models), base, elements,
			                                             rows.length, workers);
		}
		return std::make_unique<ModelStockRowBlocks>(input.tensor_name, std::move(models), base, elements,
		                                             std::max<uint64_t>(elements, 1), workers);
	}

	// filter_wise's streamed pair sums: one set per row segment (at most rows + blocks of them)
	// and a t per row, counted against --memory-budget.
	uint64_t working_bytes(const MergeInput& input, size_t source_count, uint64_t elements) const override {
		if (global_param(info_, input, "filter_wise") == 0 || source_count < 2) return 0;
		const VectorLayout rows = VectorLayout::rows(input.tensor_name, input.shape, elements);
		if (rows.count == 0 || rows.length < kShortestStreamedRow) return 0;
		const uint64_t pairs = (source_count - 1) * (source_count - 1), blocks = block_count(elements);
		return ((rows.count + blocks) * pairs + rows.count) * sizeof(double) + blocks * sizeof(std::vector<double>);
	}

	// The whole-tensor form, kept as the reference of the streamed ones (and used for short rows):
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
		std::vector<std::vector<double>> dots(count, std::vector<double>(count));
		for (size_t a = 0; a < count; ++a)
			for (size_t b = a + 1; b < count; ++b)
				dots[a][b] = dot_product(deltas[a], deltas[b]);
		return interpolation_from(input.tensor_name, norms, dots);
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
