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

// TSV-M of a tall matrix (m ≥ n) without its SVDs, from its rows in panels, in order: each task's
// top-k right singular vectors V_t and values σ_t are the top eigenpairs of its Gram matrix
// Δ_tᵀΔ_t (pass 0), so U_t = Δ_t V_t σ_t⁻¹ = Δ_t A_t; the stacked U = [U_1 … U_N] has polar
// factor U (UᵀU)^(-1/2), and UᵀU = PᵀP with P = [Δ_1 A_1 … Δ_N A_N] (pass 1). The merge
// U⊥ diag(σ) V⊥ᵀ is then, row by row, Σ_t (Δ_t[r] A_t) R_t with R = (UᵀU)^(-1/2) diag(σ) polar(Vᵀ):
// only n × n matrices are held. A wide matrix is merged as its transpose (TSV-M commutes with
// transposition: polar(Xᵀ) = polar(X)ᵀ).
class TsvGram {
public:
	TsvGram(size_t tasks, uint64_t rows, uint64_t cols)
	    : tasks_(tasks), cols_(cols), k_(subspace::rank_share(rows, cols, tasks)) {
		grams_.assign(tasks, linalg::MatrixD(cols, cols));
	}

	size_t rank() const { return k_; }

	// Every task's next rows (panel[t] for task t), in row order: pass 0, then pass 1.
	void add_panel(const std::vector<linalg::MatrixD>& panel) {
		if (pass_ == 0) {
			for (size_t t = 0; t < tasks_; ++t)
				linalg::add_gram(grams_[t], panel[t]);
			return;
		}
		linalg::MatrixD stacked(panel[0].rows, k_ * tasks_);
		for (size_t t = 0; t < tasks_; ++t) {
			const linalg::MatrixD p = linalg::matmul(panel[t], false, a_[t], false);
			for (size_t r = 0; r < p.rows; ++r)
				std::copy_n(&p.data[r * k_], k_, &stacked.data[r * stacked.cols + t * k_]);
		}
		linalg::add_gram(gram_of_u_, stacked);
	}

	void end_pass() {
		if (pass_++ == 0)
			factor_tasks();
		else
			build_output_operator();
	}

	// After both passes: the merged delta's rows from every task's same rows (rows × n each). In
	// double: R's entries grow as 1 / √λ of UᵀU's smallest kept eigenvalue, and float32 products
	// lost 10⁻⁴ of the delta's norm to that on nearly dependent tasks.
	linalg::MatrixD merged_rows(const std::vector<linalg::MatrixD>& task_rows) const {
		linalg::MatrixD delta(task_rows[0].rows, cols_);
		for (size_t t = 0; t < tasks_; ++t) {
			const linalg::MatrixD projected = linalg::matmul(task_rows[t], false, projections_[t], false);
			linalg::add_product(delta, projected, false, outputs_[t], false);
		}
		return delta;
	}

private:
	// After pass 0: σ_t, V_t and A_t = V_t σ_t⁻¹ of every task; σ below 1e-6 · σ_max of its task
	// (below float32's resolution of the matrix) counts as zero, as its U column is noise.
	void factor_tasks() {
		const size_t width = tasks_ * k_;
		sigma_.assign(width, 0.0);
		stacked_vt_ = linalg::MatrixD(width, cols_);
		for (size_t t = 0; t < tasks_; ++t) {
			for (const double v : grams_[t].data)
				if (!std::isfinite(v)) throw Error(fmt::format("task vector {} has values that are not finite", t + 1));
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
	}

	// After pass 1: R = (UᵀU)^(-1/2) diag(σ) polar(Vᵀ), split by task into the output's operators
	// A_t (n × k) and R_t (k × n).
	void build_output_operator() {
		linalg::MatrixD inverse_sqrt = linalg::inverse_sqrt_psd(gram_of_u_, 1e-12);
		gram_of_u_ = {};
		for (size_t r = 0; r < inverse_sqrt.rows; ++r)
			for (size_t c = 0; c < inverse_sqrt.cols; ++c)
				inverse_sqrt(r, c) *= sigma_[c];
		const linalg::MatrixD r =
		    linalg::matmul(inverse_sqrt, false, linalg::polar_factor_of_rows(stacked_vt_, 1e-12), false);
		stacked_vt_ = {};
		for (size_t t = 0; t < tasks_; ++t) {
			linalg::MatrixD out(k_, cols_);
			std::copy_n(&r.data[t * k_ * cols_], k_ * cols_, out.data.begin());
			outputs_.push_back(std::move(out));
		}
		projections_ = std::move(a_);
	}

	size_t tasks_, cols_, k_;
	int pass_ = 0;
	std::vector<linalg::MatrixD> grams_, a_;
	std::vector<double> sigma_;
	linalg::MatrixD stacked_vt_, gram_of_u_;
	std::vector<linalg::MatrixD> projections_, outputs_;
};

// Which tensor values are task vectors: weight_t · (model_t − base), rounded to float32.
struct TaskVectors {
	std::vector<size_t> models;
	std::vector<double> weights;
	size_t base;

	static TaskVectors of(const MergeInput& input, size_t source_count) {
		TaskVectors tasks{
		    .models = model_indices(input, source_count), .weights = {}, .base = static_cast<size_t>(input.base_index)};
		for (size_t i : tasks.models)
			tasks.weights.push_back(*source_param(tsv_method().info(), input, i, "weight"));
		return tasks;
	}

	float value(std::span<const std::span<const float>> sources, size_t t, size_t index) const {
		const double difference = static_cast<double>(sources[models[t]][index]) - sources[base][index];
		return static_cast<float>(weights[t] * difference);
	}
};

std::vector<linalg::MatrixD> to_double(const std::vector<linalg::MatrixF>& panel) {
	std::vector<linalg::MatrixD> wide;
	for (const auto& matrix : panel) {
		linalg::MatrixD d(matrix.rows, matrix.cols);
		std::copy(matrix.data.begin(), matrix.data.end(), d.data.begin());
		wide.push_back(std::move(d));
	}
	return wide;
}

// The streamed form of TsvGram: the executor's blocks (whole rows) reach it in panels, in row order.
class TsvTallMerge final : public BlockMerge {
public:
	TsvTallMerge(TaskVectors tasks, double alpha, uint64_t rows, uint64_t cols, size_t panel_rows)
	    : tasks_(std::move(tasks)), alpha_(alpha), rows_(rows), cols_(cols), gram_(tasks_.models.size(), rows, cols),
	      panels_(tasks_.models.size(), cols, panel_rows) {
		panels_.start([this](const std::vector<linalg::MatrixD>& panel) { gram_.add_panel(panel); });
	}

	int stat_passes() const override { return 2; }

	void observe(int, const Block& block, unsigned) override {
		const size_t size = block.size();
		std::vector<float> values(tasks_.models.size() * size);
		for (size_t t = 0; t < tasks_.models.size(); ++t)
			for (size_t j = 0; j < size; ++j)
				values[t * size + j] = tasks_.value(block.sources, t, j);
		panels_.add(block.index, std::move(values));
	}

	void end_pass(int pass) override {
		panels_.finish(block_count(rows_ * cols_));
		gram_.end_pass();
		if (pass == 0) panels_.start([this](const std::vector<linalg::MatrixD>& panel) { gram_.add_panel(panel); });
	}

	void abandon() override { panels_.abandon(); }

	void merge(const Block& block, std::span<float> out, unsigned) override {
		const size_t size = block.size(), rows = size / cols_;
		std::vector<linalg::MatrixD> task_rows(tasks_.models.size(), linalg::MatrixD(rows, cols_));
		for (size_t t = 0; t < task_rows.size(); ++t)
			for (size_t j = 0; j < size; ++j)
				task_rows[t].data[j] = tasks_.value(block.sources, t, j);
		const linalg::MatrixD delta = gram_.merged_rows(task_rows);
		const std::span<const float> base = block.sources[tasks_.base];
		for (size_t j = 0; j < size; ++j)
			out[j] = base[j] + static_cast<float>(alpha_ * delta.data[j]);
	}

	std::vector<std::string> notes() const override {
		return {fmt::format("top-{} singular vectors from Gram matrices, streamed ({} × {} matrix)", gram_.rank(),
		                    rows_, cols_)};
	}

private:
	TaskVectors tasks_;
	double alpha_;
	uint64_t rows_, cols_;
	TsvGram gram_;
	OrderedRowPanels panels_;
};

// TSV-M of a whole matrix in memory, through TsvGram in panels of about 2^19 elements: a wide
// matrix as its transpose (its columns are the panels' rows). Holds no copy of the tensor.
void merge_whole_matrix(const MergeInput& input, const TaskVectors& tasks, double alpha, std::span<float> out,
                        std::vector<std::string>* notes) {
	const uint64_t rows = input.shape[0], cols = input.shape[1];
	const bool wide = rows < cols;
	const uint64_t tall_rows = wide ? cols : rows, tall_cols = wide ? rows : cols;
	const size_t panel_rows = std::max<size_t>(1, (size_t{1} << 19) / tall_cols);
	// Flat index of the tall form's element (r, c).
	const auto index = [&](uint64_t r, uint64_t c) { return wide ? c * cols + r : r * cols + c; };
	const auto task_panel = [&](uint64_t first, size_t count) {
		std::vector<linalg::MatrixF> panel(tasks.models.size(), linalg::MatrixF(count, tall_cols));
		for (size_t t = 0; t < panel.size(); ++t)
			for (size_t r = 0; r < count; ++r)
				for (size_t c = 0; c < tall_cols; ++c)
					panel[t](r, c) = tasks.value(input.sources, t, index(first + r, c));
		return panel;
	};
	TsvGram gram(tasks.models.size(), tall_rows, tall_cols);
	for (int pass = 0; pass < 2; ++pass) {
		for (uint64_t first = 0; first < tall_rows; first += panel_rows)
			gram.add_panel(to_double(task_panel(first, std::min<uint64_t>(panel_rows, tall_rows - first))));
		gram.end_pass();
	}
	const std::span<const float> base = input.sources[tasks.base];
	for (uint64_t first = 0; first < tall_rows; first += panel_rows) {
		const size_t count = std::min<uint64_t>(panel_rows, tall_rows - first);
		const linalg::MatrixD delta = gram.merged_rows(to_double(task_panel(first, count)));
		for (size_t r = 0; r < count; ++r)
			for (size_t c = 0; c < tall_cols; ++c) {
				const uint64_t i = index(first + r, c);
				out[i] = base[i] + static_cast<float>(alpha * delta(r, c));
			}
	}
	if (notes)
		notes->push_back(fmt::format("top-{} singular vectors from Gram matrices ({} × {} matrix{})", gram.rank(), rows,
		                             cols, wide ? ", as its transpose" : ""));
}

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
		const TaskVectors tasks = TaskVectors::of(input, input.sources.size());
		subspace::naming_tensor(input, info_.name, [&] {
			if (subspace::is_matrix(input)) return merge_whole_matrix(input, tasks, alpha, out, input.notes);
			std::vector<float> delta = subspace::mean_of(subspace::task_matrices(input, tasks.weights));
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
};

} // namespace

std::unique_ptr<BlockMerge> tsv_tall_block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
                                                 size_t panel_rows) {
	const MethodInfo& info = tsv_method().info();
	check_source_count(info, input, source_count);
	if (input.shape.size() != 2 || input.shape[0] == 0 || input.shape[1] == 0) return nullptr;
	const uint64_t rows = input.shape[0], cols = input.shape[1];
	if (rows < cols || rows * cols != elements || kBlockElements % cols != 0) return nullptr;
	if (panel_rows == 0) panel_rows = std::max<size_t>(1, (size_t{1} << 19) / cols);
	return std::make_unique<TsvTallMerge>(TaskVectors::of(input, source_count), global_param(info, input, "alpha"),
	                                      rows, cols, panel_rows);
}

const MergeMethod& tsv_method() {
	static const TsvMethod method;
	return method;
}

} // namespace weld
