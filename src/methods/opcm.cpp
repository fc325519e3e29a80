// OPCM, continual merging by orthogonal projection (Tang et al. 2025): models are merged one at
// a time in recipe order. Each new matrix task vector τ is expressed in the singular bases of
// the merged delta so far (P = Uᵀ τ V); its diagonal, and the top-left r×r block where the top
// r singular values hold more than `alpha` of the singular mass, are removed before adding
// U P Vᵀ. Finally the merged delta is rescaled to the mean norm of the task vectors.
#include "methods/methods.h"
#include "methods/row_panel_methods.h"
#include "methods/row_panels.h"
#include "methods/subspace_util.h"
#include "util/error.h"

#include <cmath>
#include <fmt/format.h>

namespace weld {
namespace {

// Number of leading singular values before the cumulative share first exceeds alpha.
size_t split_rank(const std::vector<double>& s, double alpha) {
	double total = 0, running = 0;
	for (double v : s)
		total += v;
	if (!(total > 0)) return 0;
	for (size_t i = 0; i < s.size(); ++i) {
		running += s[i];
		if (running / total > alpha) return i;
	}
	return 0; // no share exceeds alpha (alpha = 1): only the diagonal is removed
}

linalg::MatrixD identity(size_t n) {
	linalg::MatrixD m(n, n);
	for (size_t i = 0; i < n; ++i)
		m(i, i) = 1.0;
	return m;
}

// OPCM of a tall matrix (m ≥ n) from the rows of its task vectors, without SVDs of m × n
// matrices. Every merged delta so far is M = Σ_{s<t} τ_s C_s (C_1 = I). Pass t − 1 reads the
// rows once more, forms M's rows and sums MᵀM and Mᵀτ_t; step t then takes V, σ from the
// eigenpairs of MᵀM, P = Uᵀ τ_t V = σ⁻¹ Vᵀ (Mᵀτ_t) V with U = M V σ⁻¹, the removed entries Z of
// P, and M ← M Q + τ_t with Q = I − V σ⁻¹ Z Vᵀ (U Z Vᵀ = M V σ⁻¹ Z Vᵀ), so C_s ← C_s Q.
// A pass per step holds N + 2 n × n matrices, where the N(N+1)/2 cross Gram matrices of one pass
// would exceed a 1 GB budget at N = 8, n = 2048. Streamed, M's rows come from the factors
// (Σ_s τ_s C_s: t products per row in pass t − 1, N in the output). A whole tensor keeps M's
// rows (m × n doubles) from pass to pass instead, so M Q + τ_{t−1} takes one product per row
// and the output (M Q + τ_N) · scale one: N = 3 takes 10 m n² multiply-adds instead of 16.
// σ at or below 10⁻⁶ σ_max counts as zero: its u is undefined (the SVD completes the basis
// arbitrarily) and nothing is removed along it. The output rows are Σ_s τ_s[r] C_s · scale.
class OpcmGram final : public RowPanelAlgorithm {
public:
	OpcmGram(size_t tasks, uint64_t rows, uint64_t cols, double alpha, bool keep_rows)
	    : tasks_(tasks), cols_(cols), alpha_(alpha), keep_rows_(keep_rows && tasks > 1) { // one task: no pass, M = τ_1
		factors_.push_back(keep_rows_ ? linalg::MatrixD() : identity(cols_));
		square_sums_.resize(tasks_);
		if (keep_rows_) kept_ = linalg::MatrixD(rows, cols);
		start_step();
	}

	int passes() const override { return static_cast<int>(tasks_) - 1; }

	std::string note() const override {
		return fmt::format("singular bases from Gram matrices, a pass per model{}",
		                   keep_rows_ ? ", the merged rows kept" : "");
	}

	// In double: σ⁻¹ of MᵀM's small eigenvalues scales their rounding.
	void add_panel(const std::vector<linalg::MatrixF>& values) override {
		const size_t t = factors_.size(); // the task this pass adds
		const linalg::MatrixD m_rows = merged_so_far(values, t);
		if (t == 1) square_sums_[0] += sum_of_squares(values[0]);
		linalg::add_gram(mtm_, m_rows);
		linalg::add_product(mt_task_, m_rows, true, linalg::to_double(values[t]), false);
		square_sums_[t] += sum_of_squares(values[t]);
		if (keep_rows_) std::copy(m_rows.data.begin(), m_rows.data.end(), &kept_.data[cursor_ * cols_]);
		cursor_ += m_rows.rows;
	}

	void end_pass() override {
		linalg::symmetric_from_upper(mtm_);
		for (const auto* sums : {&mtm_, &mt_task_})
			for (const double v : sums->data)
				if (!std::isfinite(v)) throw Error("a task vector has values that are not finite");
		linalg::MatrixD q = projection_step(mtm_, mt_task_);
		if (!keep_rows_)
			for (auto& c : factors_)
				c = linalg::matmul(c, false, q, false);
		factors_.push_back(keep_rows_ ? linalg::MatrixD() : identity(cols_));
		if (factors_.size() == tasks_) {
			// ‖M Q + τ_N‖² = tr(Qᵀ MᵀM Q) + 2 tr(Qᵀ Mᵀτ_N) + ‖τ_N‖².
			const linalg::MatrixD mtm_q = linalg::matmul(mtm_, false, q, false);
			double square = square_sums_[tasks_ - 1];
			for (size_t k = 0; k < q.data.size(); ++k)
				square += q.data[k] * (mtm_q.data[k] + 2 * mt_task_.data[k]);
			rescale(std::sqrt(std::max(square, 0.0)));
		}
		last_q_ = std::move(q);
		cursor_ = 0;
		start_step();
	}

	linalg::MatrixD merged_rows(const std::vector<linalg::MatrixF>& task_rows, uint64_t first_row) const override {
		if (keep_rows_) {
			linalg::MatrixD delta = kept_times_q(task_rows.back(), first_row);
			for (double& d : delta.data)
				d *= scale_;
			return delta;
		}
		linalg::MatrixD delta(task_rows[0].rows, cols_);
		for (size_t s = 0; s < tasks_; ++s)
			linalg::add_product(delta, linalg::to_double(task_rows[s]), false, factors_[s], false);
		for (double& d : delta.data)
			d *= scale_;
		return delta;
	}

private:
	void start_step() {
		if (factors_.size() < tasks_) {
			mtm_ = linalg::MatrixD(cols_, cols_);
			mt_task_ = linalg::MatrixD(cols_, cols_);
		} else {
			mtm_ = mt_task_ = linalg::MatrixD();
		}
	}

	// M's rows for this panel in the pass adding task t: τ_1 in the first; then M Q + τ_{t−1} from
	// the kept rows, or Σ_{s<t} τ_s C_s from the factors.
	linalg::MatrixD merged_so_far(const std::vector<linalg::MatrixF>& values, size_t t) const {
		if (t == 1) return linalg::to_double(values[0]);
		if (keep_rows_) return kept_times_q(values[t - 1], cursor_);
		linalg::MatrixD m_rows(values[0].rows, cols_);
		for (size_t s = 0; s < t; ++s)
			linalg::add_product(m_rows, linalg::to_double(values[s]), false, factors_[s], false);
		return m_rows;
	}

	// The kept rows from first_row (as many as task has) times the last step's Q, plus task.
	linalg::MatrixD kept_times_q(const linalg::MatrixF& task, uint64_t first_row) const {
		linalg::MatrixD kept(task.rows, cols_);
		std::copy_n(&kept_.data[first_row * cols_], task.rows * cols_, kept.data.begin());
		linalg::MatrixD m_rows = linalg::matmul(kept, false, last_q_, false);
		for (size_t j = 0; j < m_rows.data.size(); ++j)
			m_rows.data[j] += task.data[j];
		return m_rows;
	}

	// Adaptive scaling: the merged delta keeps the mean task-vector norm.
	void rescale(double merged_norm) {
		double norm_sum = 0;
		for (const double square : square_sums_)
			norm_sum += std::sqrt(std::max(square, 0.0));
		const double target = norm_sum / static_cast<double>(tasks_);
		scale_ = merged_norm > 0 ? target / merged_norm : 0.0;
	}

	static double sum_of_squares(const linalg::MatrixF& m) {
		double sum = 0;
		for (const float v : m.data)
			sum += static_cast<double>(v) * v;
		return sum;
	}

	// Q = I − V σ⁻¹ Z Vᵀ for the next task, from MᵀM and Mᵀτ; σ⁻¹ Z = σ⁻² (Vᵀ (Mᵀτ) V) kept
	// on its diagonal D and top-left r × r block B; only those entries are formed (X V once, then
	// column dots and an r × r product), and V D Vᵀ + V_r B V_rᵀ (B without its diagonal) takes one
	// n × n × n product and two n × r ones: two n³ products a step instead of four.
	linalg::MatrixD projection_step(const linalg::MatrixD& mtm, const linalg::MatrixD& mt_task) const {
		const size_t n = cols_;
		const linalg::Eigenpairs pairs = linalg::top_eigenpairs(mtm, n);
		const linalg::MatrixD& v = pairs.vectors;
		std::vector<double> sigma(n), inverse_square(n, 0.0);
		for (size_t i = 0; i < n; ++i)
			sigma[i] = std::sqrt(std::max(pairs.values[i], 0.0));
		for (size_t i = 0; i < n; ++i)
			if (sigma[i] > 1e-6 * sigma[0]) inverse_square[i] = 1.0 / (sigma[i] * sigma[i]);
		const size_t r = split_rank(sigma, alpha_);
		const linalg::MatrixD xv = linalg::matmul(mt_task, false, v, false);
		std::vector<double> diagonal(n, 0.0); // (Vᵀ X V)_ii = Σ_k v_ki (X V)_ki
		for (size_t k = 0; k < n; ++k)
			for (size_t i = 0; i < n; ++i)
				diagonal[i] += v(k, i) * xv(k, i);
		linalg::MatrixD scaled = v;
		for (size_t k = 0; k < n; ++k)
			for (size_t i = 0; i < n; ++i)
				scaled(k, i) *= diagonal[i] * inverse_square[i];
		linalg::MatrixD q = linalg::matmul(scaled, false, v, true);
		if (r > 0) {
			const linalg::MatrixD v_r = first_columns(v, r);
			linalg::MatrixD block = linalg::matmul(v_r, true, first_columns(xv, r), false);
			for (size_t i = 0; i < r; ++i)
				for (size_t j = 0; j < r; ++j)
					block(i, j) = i == j ? 0.0 : block(i, j) * inverse_square[i];
			linalg::add_product(q, linalg::matmul(v_r, false, block, false), false, v_r, true);
		}
		for (double& x : q.data)
			x = -x;
		for (size_t i = 0; i < n; ++i)
			q(i, i) += 1.0;
		return q;
	}

	static linalg::MatrixD first_columns(const linalg::MatrixD& a, size_t count) {
		linalg::MatrixD out(a.rows, count);
		for (size_t row = 0; row < a.rows; ++row)
			std::copy_n(&a.data[row * a.cols], count, &out.data[row * count]);
		return out;
	}

	size_t tasks_, cols_;
	double alpha_;
	bool keep_rows_;
	std::vector<linalg::MatrixD> factors_; // C_s of every task added so far (empty when rows are kept)
	linalg::MatrixD mtm_, mt_task_;        // this pass's MᵀM (upper triangle) and Mᵀτ_t
	std::vector<double> square_sums_;      // ‖τ_t‖², each summed in its first pass
	linalg::MatrixD kept_, last_q_;        // M's rows of the last pass (kept) and its step's Q
	uint64_t cursor_ = 0;                  // the next panel's first row
	double scale_ = 1.0;
};

class OpcmMethod final : public MergeMethod {
public:
	OpcmMethod() {
		info_ = {
		    .name = "opcm",
		    .description = "Sequential merge projecting each task vector off the merged delta's singular subspace",
		    .reference = "https://arxiv.org/abs/2501.09522",
		    .global_params = {{.name = "alpha",
		                       .default_value = 0.5,
		                       .help = "Fraction of singular mass whose top-left block is projected out",
		                       .min_value = 0,
		                       .max_value = 1}},
		    .model_params = {},
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
		const size_t count = tasks.models.size();
		subspace::naming_tensor(input, info_.name, [&] {
			if (subspace::is_matrix(input))
				return merge_in_row_panels(
				    input, tasks, 1.0,
				    [&](uint64_t rows, uint64_t cols) {
					    return std::make_unique<OpcmGram>(count, rows, cols, alpha, true);
				    },
				    out);
			merge_vectors(input, out);
		});
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned) const override {
		if (!row_panels_stream(elements, source_count)) return nullptr;
		return opcm_rows_block_merge(input, source_count, elements);
	}

	// OpcmGram's N factors, MᵀM, Mᵀτ, a panel of M's rows and the step's temporaries and
	// eigensolver: N + 8 n × n; a whole tensor's kept rows besides (m × n doubles).
	uint64_t working_bytes(const MergeInput& input, size_t source_count, uint64_t elements) const override {
		if (!subspace::is_matrix(input)) return 0;
		const size_t tasks = source_count - 1;
		const uint64_t squares = row_panel_working_bytes(tasks, input.shape[0], input.shape[1], tasks + 8);
		const bool streams = row_panels_stream(elements, source_count) && streams_as_rows(input, elements, 0);
		return streams ? squares : squares + input.shape[0] * input.shape[1] * sizeof(double);
	}

private:
	MethodInfo info_;

	static double frobenius(const linalg::MatrixF& m) {
		double sum = 0;
		for (float v : m.data)
			sum += static_cast<double>(v) * v;
		return std::sqrt(sum);
	}

	// Tensors that are not matrices: the task vectors summed, rescaled to their mean norm.
	static void merge_vectors(const MergeInput& input, std::span<float> out) {
		linalg::MatrixF merged;
		double norm_sum = 0;
		for (const linalg::MatrixF& task : subspace::task_matrices(input)) {
			norm_sum += frobenius(task);
			if (merged.data.empty())
				merged = task;
			else
				for (size_t j = 0; j < merged.data.size(); ++j)
					merged.data[j] += task.data[j];
		}
		const size_t count = input.sources.size() - 1;
		const double norm = frobenius(merged), target = norm_sum / static_cast<double>(count);
		const double scale = norm > 0 ? target / norm : 0.0;
		for (float& d : merged.data)
			d = static_cast<float>(scale * d);
		subspace::write_base_plus(input, merged.data, out);
	}
};

} // namespace

std::unique_ptr<BlockMerge> opcm_rows_block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
                                                  size_t panel_rows) {
	const MethodInfo& info = opcm_method().info();
	check_source_count(info, input, source_count);
	if (!streams_as_rows(input, elements, 0)) return nullptr;
	const TaskVectors tasks = TaskVectors::of(input, source_count);
	const double alpha = global_param(info, input, "alpha");
	return stream_row_panels(
	    std::make_unique<OpcmGram>(tasks.models.size(), input.shape[0], input.shape[1], alpha, false), tasks, 1.0,
	    input.shape[0], input.shape[1], panel_rows);
}

const MergeMethod& opcm_method() {
	static const OpcmMethod method;
	return method;
}

} // namespace weld
