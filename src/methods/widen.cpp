// WIDEN, weight disentanglement (Yu et al. 2024, "Extend Model Merging from Fine-Tuned to
// Pre-Trained Large Language Models via Weight Disentanglement"): each weight column splits into
// a magnitude (its L2 norm) and a direction (the unit column). How far each model moved from the
// base in each, ranked within the model, gives per-column importance scores across models (a
// softmax, with the above-average ones calibrated to a fixed value) that weight the task vectors.
#include "methods/methods.h"
#include "methods/reference.h"
#include "tensor/row_reduce.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>

namespace weld {
namespace {

struct Calibration {
	double above_average_ratio;
	double value;
};

// Position of each value in a stable ascending sort, divided by the count: 0, 1/n, ..., (n-1)/n.
std::vector<double> rank_within_model(const std::vector<double>& values) {
	std::vector<size_t> order(values.size());
	std::iota(order.begin(), order.end(), size_t{0});
	std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return values[a] < values[b]; });
	std::vector<double> rank(values.size());
	for (size_t r = 0; r < order.size(); ++r)
		rank[order[r]] = static_cast<double>(r) / static_cast<double>(values.size());
	return rank;
}

// significance[i][g] for model i and group g -> scores[i][g]: softmax over the models, except
// where a model's significance exceeds its own mean (over groups) times the ratio, which gets
// the calibration value instead.
std::vector<std::vector<double>> importance_scores(const std::vector<std::vector<double>>& significance,
                                                   Calibration calibration) {
	const size_t n = significance.size(), groups = significance[0].size();
	std::vector<std::vector<double>> scores(n, std::vector<double>(groups));
	for (size_t g = 0; g < groups; ++g) {
		double top = -INFINITY, sum = 0;
		for (size_t i = 0; i < n; ++i)
			top = std::max(top, significance[i][g]);
		for (size_t i = 0; i < n; ++i)
			sum += scores[i][g] = std::exp(significance[i][g] - top);
		for (size_t i = 0; i < n; ++i)
			scores[i][g] /= sum;
	}
	for (size_t i = 0; i < n; ++i) {
		const double mean =
		    std::accumulate(significance[i].begin(), significance[i].end(), 0.0) / static_cast<double>(groups);
		for (size_t g = 0; g < groups; ++g)
			if (significance[i][g] > mean * calibration.above_average_ratio) scores[i][g] = calibration.value;
	}
	return scores;
}

// How far a column moved from the base (sums of base², task², base·task over it): in magnitude,
// and in direction (1 − cos).
double magnitude_change(double bb, double tt) {
	return std::fabs(std::sqrt(tt) - std::sqrt(bb));
}

double direction_change(double bb, double tt, double bt) {
	// Zero columns: two zeros point the same way; a zero and a non-zero do not.
	const double cos = bb > 0 && tt > 0 ? bt / std::sqrt(bb * tt) : (bb == tt ? 1.0 : 0.0);
	return 1.0 - cos;
}

// The embedding matrix is [vocab, hidden]; the reference transposes it so that a "column" is
// one token's vector, as for the [out, in] linear weights where a column is one input's weights.
bool is_token_embedding(std::string_view name) {
	return name.find("embed_tokens") != std::string_view::npos || name.find("wte") != std::string_view::npos ||
	       name.find("word_embeddings") != std::string_view::npos;
}

// Sums of per-block vectors combined pairwise in a fixed binary tree over the block indices, so
// the result does not depend on the order blocks come in, while only the sums of unfinished
// subtrees are held (a few per worker when blocks come roughly in order, as the executor's do).
class BlockTreeSum {
public:
	BlockTreeSum(uint64_t blocks, size_t width) : blocks_(blocks), width_(width) {}

	// From any thread, once per block.
	void add(uint64_t block, std::vector<double> sum) {
		uint64_t node = block;
		for (int level = 0;; ++level, node >>= 1) {
			if (node == 0 && (uint64_t{1} << level) >= blocks_) break; // the root: every block
			const uint64_t sibling = node ^ 1;
			if ((sibling << level) >= blocks_) continue; // no right sibling: goes up alone
			std::vector<double> other;
			{
				std::lock_guard lock(mutex_);
				const auto found = pending_.find({level, sibling});
				if (found == pending_.end()) {
					pending_.emplace(std::pair{level, node}, std::move(sum));
					return;
				}
				other = std::move(found->second);
				pending_.erase(found);
			}
			for (size_t w = 0; w < width_; ++w)
				sum[w] += other[w];
		}
		std::lock_guard lock(mutex_);
		total_ = std::move(sum);
	}

	// After every block was added.
	std::vector<double> take() {
		if (total_.empty()) total_.assign(width_, 0.0);
		return std::move(total_);
	}

private:
	uint64_t blocks_;
	size_t width_;
	std::mutex mutex_;
	std::map<std::pair<int, uint64_t>, std::vector<double>> pending_; // (level, node): its sum
	std::vector<double> total_;
};

// The streaming form. One statistics pass: vectors, each task vector's sum of |delta| (per block,
// then in block order); matrices, per column (per row for token embeddings) the sums of base²,
// and of task² and base·task for each task (per block, combined in a fixed tree; rows that cross
// blocks piece by piece). Then the scores as merge_whole's, and the output pass. The sums may
// differ from merge_whole's by rounding.
class WidenBlocks final : public BlockMerge {
public:
	enum class Layout { Elements, Columns, Rows };

	WidenBlocks(Layout layout, std::vector<size_t> tasks, size_t base, Calibration calibration, uint64_t elements,
	            uint64_t cols)
	    : layout_(layout), tasks_(std::move(tasks)), base_(base), calibration_(calibration), n_(elements), cols_(cols),
	      width_(1 + 2 * tasks_.size()) {
		if (layout_ == Layout::Elements) block_sums_.resize(block_count(elements) * tasks_.size());
		if (layout_ == Layout::Columns)
			column_sums_ = std::make_unique<BlockTreeSum>(block_count(elements), cols * width_);
		if (layout_ == Layout::Rows)
			row_sums_ = std::make_unique<RowReduction>(elements, cols, width_, RowReduction::Op::Sum);
	}

	int stat_passes() const override { return 1; }

	void observe(int, const Block& block, unsigned) override {
		const std::span<const float> base = block.sources[base_];
		if (layout_ == Layout::Elements) {
			for (size_t i = 0; i < tasks_.size(); ++i) {
				double sum = 0;
				for (size_t j = 0; j < block.size(); ++j)
					sum += std::fabs(static_cast<double>(block.sources[tasks_[i]][j]) - base[j]);
				block_sums_[block.index * tasks_.size() + i] = sum;
			}
		} else if (layout_ == Layout::Columns) {
			std::vector<double> sums(cols_ * width_, 0.0);
			for (size_t j = 0; j < block.size(); ++j)
				add_products(block, j, &sums[((block.offset + j) % cols_) * width_]);
			column_sums_->add(block.index, std::move(sums));
		} else {
			row_sums_->observe(block.offset, block.size(), [&](uint64_t first, uint64_t count, std::span<double> out) {
				std::fill(out.begin(), out.end(), 0.0);
				for (size_t j = first - block.offset; j < first - block.offset + count; ++j)
					add_products(block, j, out.data());
			});
		}
	}

	void end_pass(int) override {
		if (layout_ == Layout::Elements) {
			for (size_t i = 0; i < tasks_.size(); ++i) {
				double sum = 0;
				for (uint64_t b = 0; b < block_count(n_); ++b)
					sum += block_sums_[b * tasks_.size() + i];
				means_.push_back(sum / static_cast<double>(n_));
			}
			return;
		}
		if (layout_ == Layout::Rows) row_sums_->end_pass();
		const std::vector<double> columns = layout_ == Layout::Columns ? column_sums_->take() : std::vector<double>{};
		const uint64_t groups = layout_ == Layout::Columns ? cols_ : n_ / cols_;
		std::vector<std::vector<double>> magnitude(tasks_.size()), direction(tasks_.size());
		for (size_t i = 0; i < tasks_.size(); ++i) {
			std::vector<double> magnitude_diff(groups), direction_diff(groups);
			for (uint64_t g = 0; g < groups; ++g) {
				const double* sums = layout_ == Layout::Columns ? &columns[g * width_] : row_sums_->row(g).data();
				const double bb = sums[0], tt = sums[1 + 2 * i], bt = sums[2 + 2 * i];
				magnitude_diff[g] = magnitude_change(bb, tt);
				direction_diff[g] = direction_change(bb, tt, bt);
			}
			magnitude[i] = rank_within_model(magnitude_diff);
			direction[i] = rank_within_model(direction_diff);
		}
		const auto magnitude_scores = importance_scores(magnitude, calibration_);
		const auto direction_scores = importance_scores(direction, calibration_);
		coefficients_.assign(tasks_.size(), std::vector<double>(groups));
		for (size_t i = 0; i < tasks_.size(); ++i)
			for (uint64_t g = 0; g < groups; ++g)
				coefficients_[i][g] = 0.5 * (magnitude_scores[i][g] + direction_scores[i][g]);
	}

	void merge(const Block& block, std::span<float> out, unsigned) override {
		if (layout_ == Layout::Elements) return merge_elements(block, out);
		// Row by row (pieces of rows at the block's ends), tasks outermost, so the element loops
		// vectorize; each element still sums its tasks in order.
		const float* base = block.sources[base_].data();
		double delta[kBlockElements];
		std::fill_n(delta, out.size(), 0.0);
		for (size_t i = 0; i < tasks_.size(); ++i) {
			const float* x = block.sources[tasks_[i]].data();
			const std::vector<double>& coefficient = coefficients_[i];
			for (size_t j = 0; j < out.size();) {
				const uint64_t row = (block.offset + j) / cols_, column = (block.offset + j) % cols_;
				const size_t end = std::min<uint64_t>(out.size(), (row + 1) * cols_ - block.offset);
				if (layout_ == Layout::Columns) {
					const double* c = coefficient.data() + column; // from element j's column on
					for (size_t t = 0; j < end; ++j, ++t)
						delta[j] += c[t] * (static_cast<double>(x[j]) - base[j]);
				} else {
					for (const double c = coefficient[row]; j < end; ++j)
						delta[j] += c * (static_cast<double>(x[j]) - base[j]);
				}
			}
		}
		for (size_t j = 0; j < out.size(); ++j)
			out[j] = static_cast<float>(base[j] + delta[j]);
	}

private:
	Layout layout_;
	std::vector<size_t> tasks_;
	size_t base_;
	Calibration calibration_;
	uint64_t n_, cols_;
	size_t width_;                                  // sums per column: base², then per task task², base·task
	std::vector<double> block_sums_;                // Elements: per block, per task
	std::vector<double> means_;                     // Elements: per task, the mean |delta|
	std::unique_ptr<BlockTreeSum> column_sums_;     // Columns
	std::unique_ptr<RowReduction> row_sums_;        // Rows
	std::vector<std::vector<double>> coefficients_; // per task, per column or row: the mix weight

	// Adds element j's products to one column's sums, as merge_columns accumulates them.
	void add_products(const Block& block, size_t j, double* sums) const {
		const double b = block.sources[base_][j];
		sums[0] += b * b;
		for (size_t i = 0; i < tasks_.size(); ++i) {
			const double t = block.sources[tasks_[i]][j];
			sums[1 + 2 * i] += t * t, sums[2 + 2 * i] += b * t;
		}
	}

	// merge_elementwise, element by element: importance_scores' softmax and calibration.
	void merge_elements(const Block& block, std::span<float> out) const {
		const std::span<const float> base = block.sources[base_];
		std::vector<double> significance(tasks_.size()), scores(tasks_.size());
		for (size_t j = 0; j < out.size(); ++j) {
			double top = -INFINITY, sum = 0;
			for (size_t i = 0; i < tasks_.size(); ++i) {
				significance[i] = std::fabs(static_cast<double>(block.sources[tasks_[i]][j]) - base[j]);
				top = std::max(top, significance[i]);
			}
			for (size_t i = 0; i < tasks_.size(); ++i)
				sum += scores[i] = std::exp(significance[i] - top);
			double delta = 0;
			for (size_t i = 0; i < tasks_.size(); ++i) {
				scores[i] /= sum;
				if (significance[i] > means_[i] * calibration_.above_average_ratio) scores[i] = calibration_.value;
				delta += scores[i] * (static_cast<double>(block.sources[tasks_[i]][j]) - base[j]);
			}
			out[j] = static_cast<float>(base[j] + delta);
		}
	}
};

class WidenMethod final : public MergeMethod, public WholeTensorReference {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		if (out.empty()) return;
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned) const override {
		check_source_count(info_, input, source_count);
		const Calibration calibration{global_param(info_, input, "above_average_value_ratio"),
		                              global_param(info_, input, "score_calibration_value")};
		std::vector<size_t> tasks = model_indices(input, source_count);
		using Layout = WidenBlocks::Layout;
		Layout layout = Layout::Elements;
		uint64_t cols = 0;
		if (elements > 0 && input.shape.size() >= 2 && input.shape[0] != 0) {
			cols = elements / input.shape[0];
			layout = is_token_embedding(input.tensor_name) ? Layout::Rows : Layout::Columns;
		}
		return std::make_unique<WidenBlocks>(layout, std::move(tasks), static_cast<size_t>(input.base_index),
		                                     calibration, elements, cols);
	}

	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const Calibration calibration{global_param(info_, input, "above_average_value_ratio"),
		                              global_param(info_, input, "score_calibration_value")};
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		std::vector<std::span<const float>> tasks;
		for (size_t i = 0; i < input.sources.size(); ++i)
			if (static_cast<int>(i) != input.base_index) tasks.push_back(input.sources[i]);
		if (out.empty()) return;
		if (input.shape.size() < 2 || input.shape[0] == 0)
			merge_elementwise(base, tasks, calibration, out);
		else
			merge_columns(input, base, tasks, calibration, out);
	}

private:
	// Vectors (norms, biases): significance is |task vector| per element, not ranked.
	static void merge_elementwise(std::span<const float> base, const std::vector<std::span<const float>>& tasks,
	                              Calibration calibration, std::span<float> out) {
		std::vector<std::vector<double>> significance(tasks.size(), std::vector<double>(out.size()));
		for (size_t i = 0; i < tasks.size(); ++i)
			for (size_t j = 0; j < out.size(); ++j)
				significance[i][j] = std::fabs(static_cast<double>(tasks[i][j]) - base[j]);
		const auto scores = importance_scores(significance, calibration);
		for (size_t j = 0; j < out.size(); ++j) {
			double delta = 0;
			for (size_t i = 0; i < tasks.size(); ++i)
				delta += scores[i][j] * (static_cast<double>(tasks[i][j]) - base[j]);
			out[j] = static_cast<float>(base[j] + delta);
		}
	}

	// Matrices: one group per column (per row for token embeddings); trailing dimensions of
	// higher-rank tensors are flattened into the columns.
	static void merge_columns(const MergeInput& input, std::span<const float> base,
	                          const std::vector<std::span<const float>>& tasks, Calibration calibration,
	                          std::span<float> out) {
		const size_t rows = input.shape[0], cols = out.size() / rows;
		const bool transposed = is_token_embedding(input.tensor_name);
		const size_t groups = transposed ? rows : cols, length = transposed ? cols : rows;
		const auto at = [&](size_t g, size_t k) { return transposed ? g * cols + k : k * cols + g; };
		std::vector<std::vector<double>> magnitude(tasks.size()), direction(tasks.size());
		for (size_t i = 0; i < tasks.size(); ++i) {
			std::vector<double> magnitude_diff(groups), direction_diff(groups);
			for (size_t g = 0; g < groups; ++g) {
				double bb = 0, tt = 0, bt = 0;
				for (size_t k = 0; k < length; ++k) {
					const double b = base[at(g, k)], t = tasks[i][at(g, k)];
					bb += b * b, tt += t * t, bt += b * t;
				}
				magnitude_diff[g] = magnitude_change(bb, tt);
				direction_diff[g] = direction_change(bb, tt, bt);
			}
			magnitude[i] = rank_within_model(magnitude_diff);
			direction[i] = rank_within_model(direction_diff);
		}
		const auto magnitude_scores = importance_scores(magnitude, calibration);
		const auto direction_scores = importance_scores(direction, calibration);
		for (size_t g = 0; g < groups; ++g)
			for (size_t k = 0; k < length; ++k) {
				const size_t j = at(g, k);
				double delta = 0;
				for (size_t i = 0; i < tasks.size(); ++i)
					delta += 0.5 * (magnitude_scores[i][g] + direction_scores[i][g]) *
					         (static_cast<double>(tasks[i][j]) - base[j]);
				out[j] = static_cast<float>(base[j] + delta);
			}
	}

	MethodInfo info_{
	    .name = "widen",
	    .description = "Weight disentanglement: magnitude/direction changes rank the task vectors per column",
	    .reference = "https://arxiv.org/abs/2408.03092",
	    .global_params = {{.name = "above_average_value_ratio",
	                       .default_value = 1.0,
	                       .help = "Significance above this times the model's mean gets the calibration score"},
	                      {.name = "score_calibration_value",
	                       .default_value = 1.0,
	                       .help = "Score given to the above-average parameters"}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .min_sources = 2,
	};
};

} // namespace

const MergeMethod& widen_method() {
	static const WidenMethod method;
	return method;
}

} // namespace weld
