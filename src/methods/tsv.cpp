// Task Singular Vectors merging (TSV-M, Gargiulo et al., CVPR 2025): each matrix task vector
// keeps its top 1/N of singular triplets; the concatenated U's and V's are orthogonalised
// (polar factor) to remove the interference between tasks, and the merged delta is
// U⊥ diag(Σ) V⊥ᵀ. Other tensors take the mean task vector.
#include "methods/tsv.h"
#include "methods/methods.h"
#include "methods/subspace_util.h"
#include "util/error.h"

#include <condition_variable>
#include <fmt/format.h>
#include <functional>
#include <map>
#include <mutex>

namespace weld {
namespace {

// Whole rows of every task vector, in row order and in panels of panel_rows rows, whatever order
// and threads the blocks arrive in, so that sums over the panels add in one order for any thread
// count. A block that arrives more than kWindow blocks ahead of its turn waits: the executor hands
// blocks out in increasing order, so the block whose turn it is is always on its way (and
// merge_in_blocks passes them in order). abandon() ends the waits when a pass fails elsewhere.
class OrderedRowPanels {
public:
	using Consume = std::function<void(const std::vector<linalg::MatrixD>& panel)>;

	OrderedRowPanels(size_t tasks, size_t cols, size_t panel_rows)
	    : tasks_(tasks), cols_(cols), panel_rows_(panel_rows) {}

	// Before each pass: what to do with each full panel.
	void start(Consume consume) {
		consume_ = std::move(consume);
		next_ = 0;
		filled_ = 0;
		panel_.assign(tasks_, linalg::MatrixD(panel_rows_, cols_));
	}

	// Block `block`'s task values: task t's at [t · size, (t + 1) · size), whole rows.
	void add(uint64_t block, std::vector<float> values) {
		std::unique_lock lock(mutex_);
		turn_.wait(lock, [&] { return abandoned_ || block < next_ + kWindow; });
		if (abandoned_) return;
		pending_.emplace(block, std::move(values));
		if (busy_) return; // the thread appending now takes this block when its turn comes
		busy_ = true;
		while (!abandoned_ && !pending_.empty() && pending_.begin()->first == next_) {
			std::vector<float> rows = std::move(pending_.begin()->second);
			pending_.erase(pending_.begin());
			lock.unlock();
			try {
				append(rows);
			} catch (...) {
				lock.lock();
				busy_ = false;
				abandoned_ = true;
				turn_.notify_all();
				throw;
			}
			lock.lock();
			++next_;
			turn_.notify_all();
		}
		busy_ = false;
	}

	// After each pass: the last, partial panel.
	void finish(uint64_t blocks) {
		if (next_ != blocks || !pending_.empty())
			throw Error(fmt::format("tsv: {} of {} blocks reached the Gram sums", next_, blocks));
		if (filled_ == 0) return;
		for (auto& matrix : panel_) {
			matrix.rows = filled_;
			matrix.data.resize(filled_ * cols_);
		}
		consume_(panel_);
		filled_ = 0;
	}

	void abandon() {
		std::lock_guard lock(mutex_);
		abandoned_ = true;
		turn_.notify_all();
	}

private:
	static constexpr uint64_t kWindow = 256;

	void append(const std::vector<float>& values) {
		const size_t size = values.size() / tasks_;
		for (size_t row = 0; row * cols_ < size; ++row) {
			for (size_t t = 0; t < tasks_; ++t)
				std::copy_n(&values[t * size + row * cols_], cols_, &panel_[t].data[filled_ * cols_]);
			if (++filled_ == panel_rows_) {
				consume_(panel_);
				filled_ = 0;
			}
		}
	}

	size_t tasks_, cols_, panel_rows_;
	Consume consume_;
	std::vector<linalg::MatrixD> panel_;
	size_t filled_ = 0;
	std::mutex mutex_;
	std::condition_variable turn_;
	std::map<uint64_t, std::vector<float>> pending_;
	uint64_t next_ = 0;
	bool busy_ = false, abandoned_ = false;
};

// TSV-M of a tall matrix (m ≥ n) without its SVDs: each task's top-k right singular vectors V_t
// and values σ_t are the top eigenpairs of its Gram matrix Δ_tᵀΔ_t (pass 0), so U_t = Δ_t V_t
// σ_t⁻¹ = Δ_t A_t; the stacked U = [U_1 … U_N] has polar factor U (UᵀU)^(-1/2), and UᵀU = PᵀP with
// P = [Δ_1 A_1 … Δ_N A_N] (pass 1). The merge U⊥ diag(σ) V⊥ᵀ is then, row by row,
// Σ_t (Δ_t[r] A_t) R_t with R = (UᵀU)^(-1/2) diag(σ) polar(Vᵀ): only n × n matrices are held.
class TsvTallMerge final : public BlockMerge {
public:
	TsvTallMerge(std::vector<size_t> models, std::vector<double> weights, size_t base, double alpha, uint64_t rows,
	             uint64_t cols, size_t panel_rows)
	    : models_(std::move(models)), weights_(std::move(weights)), base_(base), alpha_(alpha), rows_(rows),
	      cols_(cols), k_(subspace::rank_share(rows, cols, models_.size())), panels_(models_.size(), cols, panel_rows) {
		grams_.assign(models_.size(), linalg::MatrixD(cols, cols));
		panels_.start([this](const std::vector<linalg::MatrixD>& panel) {
			for (size_t t = 0; t < panel.size(); ++t)
				linalg::add_gram(grams_[t], panel[t]);
		});
	}

	int stat_passes() const override { return 2; }

	void observe(int, const Block& block, unsigned) override { panels_.add(block.index, all_task_values(block)); }

	void end_pass(int pass) override {
		panels_.finish(block_count(rows_ * cols_));
		if (pass == 0)
			factor_tasks();
		else
			build_output_operator();
	}

	void abandon() override { panels_.abandon(); }

	void merge(const Block& block, std::span<float> out, unsigned) override {
		const size_t size = block.size(), rows = size / cols_;
		linalg::MatrixF delta(rows, cols_), task(rows, cols_);
		for (size_t t = 0; t < models_.size(); ++t) {
			task_values(block, t, task.data.data());
			const linalg::MatrixF projected = linalg::matmul(task, false, projections_[t], false);
			linalg::add_product(delta, projected, false, outputs_[t], false);
		}
		const std::span<const float> base = block.sources[base_];
		for (size_t j = 0; j < size; ++j)
			out[j] = base[j] + static_cast<float>(alpha_ * delta.data[j]);
	}

	std::vector<std::string> notes() const override {
		return {fmt::format("top-{} singular vectors from Gram matrices, streamed ({} × {} matrix)", k_, rows_, cols_)};
	}

private:
	// Task t's values in the block, as task_matrix computes them, into values[0, block.size()).
	void task_values(const Block& block, size_t t, float* values) const {
		const std::span<const float> base = block.sources[base_], x = block.sources[models_[t]];
		for (size_t j = 0; j < base.size(); ++j)
			values[j] = static_cast<float>(weights_[t] * (static_cast<double>(x[j]) - base[j]));
	}

	// Every task's values in the block, task t's at [t · size, (t + 1) · size).
	std::vector<float> all_task_values(const Block& block) const {
		std::vector<float> values(models_.size() * block.size());
		for (size_t t = 0; t < models_.size(); ++t)
			task_values(block, t, &values[t * block.size()]);
		return values;
	}

	// After pass 0: σ_t, V_t and A_t = V_t σ_t⁻¹ of every task; σ below 1e-6 · σ_max of its task
	// (below float32's resolution of the matrix) counts as zero, as its U column is noise.
	void factor_tasks() {
		const size_t tasks = models_.size(), width = tasks * k_;
		sigma_.assign(width, 0.0);
		stacked_vt_ = linalg::MatrixD(width, cols_);
		a_.clear();
		for (size_t t = 0; t < tasks; ++t) {
			const linalg::Eigenpairs pairs = linalg::top_eigenpairs(std::move(grams_[t]), k_);
			const double largest = std::sqrt(std::max(pairs.values.empty() ? 0.0 : pairs.values[0], 0.0));
			linalg::MatrixD a(cols_, k_);
			for (size_t j = 0; j < pairs.values.size(); ++j) {
				const double sigma = std::sqrt(std::max(pairs.values[j], 0.0));
				const bool kept = sigma > 1e-6 * largest;
				sigma_[t * k_ + j] = kept ? sigma : 0.0;
				for (size_t i = 0; i < cols_; ++i) {
					stacked_vt_(t * k_ + j, i) = pairs.vectors(i, j);
					a(i, j) = kept ? pairs.vectors(i, j) / sigma : 0.0;
				}
			}
			a_.push_back(std::move(a));
		}
		grams_.clear();
		gram_of_u_ = linalg::MatrixD(width, width);
		panels_.start([this](const std::vector<linalg::MatrixD>& panel) {
			linalg::MatrixD stacked(panel[0].rows, k_ * panel.size());
			for (size_t t = 0; t < panel.size(); ++t) {
				const linalg::MatrixD p = linalg::matmul(panel[t], false, a_[t], false);
				for (size_t r = 0; r < p.rows; ++r)
					std::copy_n(&p.data[r * k_], k_, &stacked.data[r * stacked.cols + t * k_]);
			}
			linalg::add_gram(gram_of_u_, stacked);
		});
	}

	// After pass 1: R = (UᵀU)^(-1/2) diag(σ) polar(Vᵀ), split by task into the output's float32
	// operators A_t (n × k) and R_t (k × n).
	void build_output_operator() {
		linalg::MatrixD inverse_sqrt = linalg::inverse_sqrt_psd(gram_of_u_, 1e-12);
		gram_of_u_ = {};
		for (size_t r = 0; r < inverse_sqrt.rows; ++r)
			for (size_t c = 0; c < inverse_sqrt.cols; ++c)
				inverse_sqrt(r, c) *= sigma_[c];
		const linalg::MatrixD r = linalg::matmul(inverse_sqrt, false, linalg::polar_factor(stacked_vt_), false);
		for (size_t t = 0; t < models_.size(); ++t) {
			linalg::MatrixF a(cols_, k_), out(k_, cols_);
			std::transform(a_[t].data.begin(), a_[t].data.end(), a.data.begin(),
			               [](double v) { return static_cast<float>(v); });
			for (size_t j = 0; j < k_ * cols_; ++j)
				out.data[j] = static_cast<float>(r.data[t * k_ * cols_ + j]);
			projections_.push_back(std::move(a));
			outputs_.push_back(std::move(out));
		}
		a_.clear();
	}

	std::vector<size_t> models_;
	std::vector<double> weights_;
	size_t base_;
	double alpha_;
	uint64_t rows_, cols_;
	size_t k_;
	OrderedRowPanels panels_;
	std::vector<linalg::MatrixD> grams_, a_;
	std::vector<double> sigma_;
	linalg::MatrixD stacked_vt_, gram_of_u_;
	std::vector<linalg::MatrixF> projections_, outputs_;
};

class TsvMethod final : public MergeMethod {
public:
	TsvMethod() {
		info_ = {
		    .name = "tsv",
		    .description = "Task Singular Vectors: top 1/N singular vectors per task, orthogonalised and summed",
		    .reference = "https://arxiv.org/abs/2412.00081",
		    .global_params = {{.name = "alpha", .default_value = 1.0, .help = "Scale of the merged task vector"}},
		    .model_params = {{.name = "weight",
		                      .default_value = 1.0,
		                      .help = "Scale of this model's task vector before the SVD"}},
		    .base = BaseModel::Required,
		    .min_sources = 2,
		};
	}

	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		if (const auto kernel = block_merge(input, input.sources.size(), out.size(), 1)) {
			subspace::naming_tensor(input, info_.name, [&] { merge_in_blocks(*kernel, input, out); });
			return;
		}
		const double alpha = global_param(info_, input, "alpha");
		std::vector<double> weights;
		for (size_t i : model_indices(input))
			weights.push_back(*source_param(info_, input, i, "weight"));
		subspace::naming_tensor(input, info_.name, [&] {
			const std::vector<linalg::MatrixF> tasks = subspace::task_matrices(input, weights);
			std::vector<float> delta =
			    subspace::is_matrix(input) ? merged_matrix(tasks, input) : subspace::mean_of(tasks);
			for (float& d : delta)
				d = static_cast<float>(alpha * d);
			subspace::write_base_plus(input, delta, out);
		});
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned workers) const override {
		(void)workers;
		if (elements < kTsvBlockElements) return nullptr;
		return tsv_tall_block_merge(input, source_count, elements);
	}

private:
	MethodInfo info_;

	static std::vector<float> merged_matrix(const std::vector<linalg::MatrixF>& tasks, const MergeInput& input) {
		const size_t k = subspace::rank_share(tasks[0].rows, tasks[0].cols, tasks.size());
		const linalg::Svd<float> cat = subspace::concatenated_factors(tasks, k, input, input.notes);
		// Orthogonalise the stacked factors: U⊥ = polar(U), V⊥ᵀ = polar(Vᵀ)ᵀ = polar(Vt).
		linalg::MatrixF u = linalg::polar_factor(cat.U);
		const linalg::MatrixF vt = linalg::polar_factor(cat.Vt);
		for (size_t r = 0; r < u.rows; ++r)
			for (size_t c = 0; c < u.cols; ++c)
				u(r, c) *= cat.S[c];
		return linalg::matmul(u, false, vt, false).data;
	}
};

} // namespace

std::unique_ptr<BlockMerge> tsv_tall_block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
                                                 size_t panel_rows) {
	const MethodInfo& info = tsv_method().info();
	check_source_count(info, input, source_count);
	if (input.shape.size() != 2 || input.shape[0] == 0 || input.shape[1] == 0) return nullptr;
	const uint64_t rows = input.shape[0], cols = input.shape[1];
	if (rows < cols || rows * cols != elements || kBlockElements % cols != 0) return nullptr;
	std::vector<size_t> models = model_indices(input, source_count);
	std::vector<double> weights;
	for (size_t i : models)
		weights.push_back(*source_param(info, input, i, "weight"));
	if (panel_rows == 0) panel_rows = std::max<size_t>(1, (size_t{1} << 19) / cols);
	return std::make_unique<TsvTallMerge>(std::move(models), std::move(weights), static_cast<size_t>(input.base_index),
	                                      global_param(info, input, "alpha"), rows, cols, panel_rows);
}

const MergeMethod& tsv_method() {
	static const TsvMethod method;
	return method;
}

} // namespace weld
