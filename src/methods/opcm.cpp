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
// matrices: one pass sums the cross Gram matrices G_su = τ_sᵀ τ_u. Every merged delta so far is
// M = Σ_s τ_s C_s (C_1 = I), so MᵀM = Σ C_sᵀ G_su C_u and Mᵀτ_t follow from them. Step t takes
// V, σ from the eigenpairs of MᵀM, P = Uᵀ τ_t V = σ⁻¹ Vᵀ (Mᵀτ_t) V with U = M V σ⁻¹, the
// removed entries Z of P, and M ← M Q + τ_t with Q = I − V σ⁻¹ Z Vᵀ (U Z Vᵀ = M V σ⁻¹ Z Vᵀ).
// σ at or below 10⁻⁶ σ_max counts as zero: its u is undefined (the SVD completes the basis
// arbitrarily) and nothing is removed along it. The output rows are Σ_s τ_s[r] C_s · scale.
class OpcmGram final : public RowPanelAlgorithm {
public:
	OpcmGram(size_t tasks, uint64_t cols, double alpha) : tasks_(tasks), cols_(cols), alpha_(alpha) {
		for (size_t s = 0; s < tasks; ++s)
			for (size_t u = s; u < tasks; ++u)
				grams_.emplace_back(cols, cols);
	}

	int passes() const override { return 1; }

	std::string note() const override { return "singular bases from Gram matrices"; }

	void add_panel(const std::vector<linalg::MatrixD>& panel) override {
		for (size_t s = 0; s < tasks_; ++s)
			for (size_t u = s; u < tasks_; ++u) {
				if (s == u)
					linalg::add_gram(gram(s, u), panel[s]);
				else
					linalg::add_product(gram(s, u), panel[s], true, panel[u], false);
			}
	}

	void end_pass() override {
		for (size_t t = 0; t < tasks_; ++t)
			linalg::symmetric_from_upper(gram(t, t));
		for (const auto& g : grams_)
			for (const double v : g.data)
				if (!std::isfinite(v)) throw Error("a task vector has values that are not finite");
		double norm_sum = 0;
		for (size_t t = 0; t < tasks_; ++t)
			norm_sum += std::sqrt(std::max(trace(gram(t, t)), 0.0));
		factors_ = {identity(cols_)};
		linalg::MatrixD mtm = gram(0, 0);
		std::vector<linalg::MatrixD> mt_task(tasks_); // Mᵀ τ_u for the tasks still to come
		for (size_t u = 1; u < tasks_; ++u)
			mt_task[u] = gram(0, u);
		for (size_t t = 1; t < tasks_; ++t) {
			const linalg::MatrixD q = projection_step(mtm, mt_task[t]);
			for (auto& c : factors_)
				c = linalg::matmul(c, false, q, false);
			factors_.push_back(identity(cols_));
			// (M Q + τ_t)ᵀ (M Q + τ_t) and (M Q + τ_t)ᵀ τ_u.
			linalg::MatrixD next = linalg::matmul(linalg::matmul(q, true, mtm, false), false, q, false);
			const linalg::MatrixD cross = linalg::matmul(q, true, mt_task[t], false);
			for (size_t i = 0; i < cols_; ++i)
				for (size_t j = 0; j < cols_; ++j)
					next(i, j) += cross(i, j) + cross(j, i) + gram(t, t)(i, j);
			mtm = std::move(next);
			for (size_t u = t + 1; u < tasks_; ++u) {
				linalg::MatrixD moved = linalg::matmul(q, true, mt_task[u], false);
				const linalg::MatrixD& g = gram(t, u);
				for (size_t j = 0; j < moved.data.size(); ++j)
					moved.data[j] += g.data[j];
				mt_task[u] = std::move(moved);
			}
		}
		grams_.clear();
		// Adaptive scaling: the merged delta keeps the mean task-vector norm.
		const double norm = std::sqrt(std::max(trace(mtm), 0.0)), target = norm_sum / static_cast<double>(tasks_);
		const double scale = norm > 0 ? target / norm : 0.0;
		for (auto& c : factors_)
			for (double& v : c.data)
				v *= scale;
	}

	linalg::MatrixD merged_rows(const std::vector<linalg::MatrixD>& task_rows) const override {
		linalg::MatrixD delta(task_rows[0].rows, cols_);
		for (size_t s = 0; s < tasks_; ++s)
			linalg::add_product(delta, task_rows[s], false, factors_[s], false);
		return delta;
	}

private:
	// G_su for s <= u (upper triangle of the task pairs, row by row).
	linalg::MatrixD& gram(size_t s, size_t u) { return grams_[s * tasks_ - s * (s + 1) / 2 + u]; }

	static double trace(const linalg::MatrixD& m) {
		double sum = 0;
		for (size_t i = 0; i < m.rows; ++i)
			sum += m(i, i);
		return sum;
	}

	// Q = I − V σ⁻¹ Z Vᵀ for the next task, from MᵀM and Mᵀτ.
	linalg::MatrixD projection_step(const linalg::MatrixD& mtm, const linalg::MatrixD& mt_task) const {
		const linalg::Eigenpairs pairs = linalg::top_eigenpairs(mtm, cols_);
		const linalg::MatrixD& v = pairs.vectors;
		std::vector<double> sigma(cols_), inverse(cols_, 0.0);
		for (size_t i = 0; i < cols_; ++i)
			sigma[i] = std::sqrt(std::max(pairs.values[i], 0.0));
		for (size_t i = 0; i < cols_; ++i)
			if (sigma[i] > 1e-6 * sigma[0]) inverse[i] = 1.0 / sigma[i];
		const size_t r = split_rank(sigma, alpha_);
		// P = σ⁻¹ Vᵀ (Mᵀτ) V; Z keeps its diagonal and top-left r × r block; σ⁻¹ Z once more.
		linalg::MatrixD p = linalg::matmul(linalg::matmul(v, true, mt_task, false), false, v, false);
		for (size_t i = 0; i < cols_; ++i)
			for (size_t j = 0; j < cols_; ++j) {
				const bool removed = i == j || (i < r && j < r);
				p(i, j) = removed ? p(i, j) * inverse[i] * inverse[i] : 0.0;
			}
		linalg::MatrixD q = linalg::matmul(linalg::matmul(v, false, p, false), false, v, true);
		for (double& x : q.data)
			x = -x;
		for (size_t i = 0; i < cols_; ++i)
			q(i, i) += 1.0;
		return q;
	}

	size_t tasks_, cols_;
	double alpha_;
	std::vector<linalg::MatrixD> grams_, factors_;
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
				    [&](uint64_t, uint64_t cols) { return std::make_unique<OpcmGram>(count, cols, alpha); }, out);
			merge_vectors(input, out);
		});
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned) const override {
		if (elements < kRowPanelStreamElements) return nullptr;
		return opcm_rows_block_merge(input, source_count, elements);
	}

	// OpcmGram's N(N+1)/2 cross Gram matrices, N factors, MᵀM, N − 1 Mᵀτ and the step's
	// temporaries and eigensolver: N(N+1)/2 + 2N + 8 n × n.
	uint64_t working_bytes(const MergeInput& input, size_t source_count, uint64_t) const override {
		if (!subspace::is_matrix(input)) return 0;
		const size_t tasks = source_count - 1;
		return row_panel_working_bytes(tasks, input.shape[0], input.shape[1], tasks * (tasks + 1) / 2 + 2 * tasks + 8);
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
	return stream_row_panels(std::make_unique<OpcmGram>(tasks.models.size(), input.shape[1], alpha), tasks, 1.0,
	                         input.shape[0], input.shape[1], panel_rows);
}

const MergeMethod& opcm_method() {
	static const OpcmMethod method;
	return method;
}

} // namespace weld
