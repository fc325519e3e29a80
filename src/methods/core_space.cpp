// Core Space merging (Panariello et al., NeurIPS 2025, https://arxiv.org/abs/2509.17786) as
// mergekit's open pull request #646 (core_space.py) defines it for full checkpoints: each task
// vector Δᵢ is cut to its top r singular triplets, Δᵢ ≈ Bᵢ Aᵢ (Bᵢ = U[:, :r],
// Aᵢ = diag(S[:r]) Vt[:r]); U_B holds the left singular vectors of [B₁ … B_N], V_A the right
// singular vectors of [A₁; …; A_N], both cut to c = min of their widths; the cores
// U_Bᵀ Bᵢ Aᵢ V_A are averaged, scaled by the global weight and mapped back. Tensors that are not
// matrices take base + weight · mean Δᵢ (mergekit's fallback).
#include "methods/methods.h"
#include "methods/row_panel_methods.h"
#include "methods/row_panels.h"
#include "methods/subspace_util.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

namespace weld {
namespace {

// mergekit's rank of each task vector's low-rank factors: max(1, min(16, min(m, n) / 4)).
size_t core_rank(size_t rows, size_t cols) {
	return std::max<size_t>(1, std::min<size_t>(16, std::min(rows, cols) / 4));
}

// The first `count` columns of a.
linalg::MatrixF first_columns(const linalg::MatrixF& a, size_t count) {
	linalg::MatrixF out(a.rows, count);
	for (size_t r = 0; r < a.rows; ++r)
		std::copy_n(a.data.begin() + static_cast<std::ptrdiff_t>(r * a.cols), count,
		            out.data.begin() + static_cast<std::ptrdiff_t>(r * count));
	return out;
}

// Whether U_B and V_A keep every direction of the stacked factors (N·r <= min(m, n), every
// matrix of an LLM): the projections onto them then leave the mean of the rank-r task vectors
// unchanged, as its columns lie in the span of the B's and its rows in that of the A's, and the
// merge is that mean, (1/N) Σ τ_t V_t V_tᵀ with V_t the top-r right singular vectors of τ_t.
bool keeps_every_direction(const MergeInput& input, size_t tasks) {
	if (!subspace::is_matrix(input)) return false;
	const uint64_t rows = input.shape[0], cols = input.shape[1];
	return tasks * core_rank(rows, cols) <= std::min(rows, cols);
}

// That mean from the rows of the task vectors (one pass): V_t from the top-r eigenpairs of the
// Gram matrix τ_tᵀ τ_t, exact where the SVD path's randomized SVD is approximate. A direction of
// eigenvalue 0 adds nothing (τ_t v = 0), so rank-deficient tasks need no special case.
class CoreSpaceGram final : public RowPanelAlgorithm {
public:
	CoreSpaceGram(size_t tasks, uint64_t rows, uint64_t cols)
	    : tasks_(tasks), cols_(cols), rank_(core_rank(rows, cols)), grams_(tasks, cols) {}

	int passes() const override { return 1; }

	std::string note() const override {
		return fmt::format("top-{} right singular vectors from Gram matrices, cores kept whole", rank_);
	}

	// Float32 products (FloatGramSums): only the top eigenvectors are kept.
	void add_panel(const std::vector<linalg::MatrixF>& panel) override {
		for (size_t t = 0; t < tasks_; ++t)
			grams_.add(t, panel[t]);
	}

	void end_pass() override {
		for (size_t t = 0; t < tasks_; ++t) {
			linalg::MatrixD gram = grams_.take(t);
			for (const double v : gram.data)
				if (!std::isfinite(v)) throw Error("a task vector has values that are not finite");
			vectors_.push_back(linalg::top_eigenpairs(std::move(gram), rank_).vectors);
		}
	}

	linalg::MatrixD merged_rows(const std::vector<linalg::MatrixF>& task_rows, uint64_t) const override {
		linalg::MatrixD delta(task_rows[0].rows, cols_);
		for (size_t t = 0; t < tasks_; ++t)
			linalg::add_product(delta, linalg::matmul(linalg::to_double(task_rows[t]), false, vectors_[t], false),
			                    false, vectors_[t], true);
		const double share = 1.0 / static_cast<double>(tasks_);
		for (double& d : delta.data)
			d *= share;
		return delta;
	}

private:
	size_t tasks_, cols_, rank_;
	linalg::FloatGramSums grams_;
	std::vector<linalg::MatrixD> vectors_;
};

class CoreSpaceMethod final : public MergeMethod {
public:
	CoreSpaceMethod() {
		info_ = {
		    .name = "core_space",
		    .description = "Core Space: rank-r task vectors averaged in the shared SVD bases of all tasks",
		    .reference = "https://arxiv.org/abs/2509.17786",
		    .global_params = {{.name = "weight",
		                       .default_value = 1.0,
		                       .help = "Scale of the merged task vector (global only, as in mergekit)"}},
		    .model_params = {},
		    .base = BaseModel::Optional,
		};
	}

	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		// mergekit: one source is copied; without a base the first source serves as one.
		MergeInput based = input;
		if (based.base_index < 0) based.base_index = 0;
		if (input.sources.size() == 1) {
			std::copy(input.sources[0].begin(), input.sources[0].end(), out.begin());
			return;
		}
		const double weight = global_param(info_, input, "weight");
		if (const auto kernel = block_merge(input, input.sources.size(), out.size(), 1)) {
			subspace::naming_tensor(input, info_.name, [&] { merge_in_blocks(*kernel, based, out); });
			return;
		}
		const TaskVectors task_vectors = TaskVectors::of(based, input.sources.size());
		if (keeps_every_direction(input, task_vectors.models.size())) {
			const size_t count = task_vectors.models.size();
			subspace::naming_tensor(input, info_.name, [&] {
				merge_in_row_panels(
				    based, task_vectors, weight,
				    [count](uint64_t rows, uint64_t cols) {
					    return std::make_unique<CoreSpaceGram>(count, rows, cols);
				    },
				    out);
			});
			return;
		}
		subspace::naming_tensor(input, info_.name, [&] {
			const std::vector<linalg::MatrixF> tasks = subspace::task_matrices(based);
			std::vector<float> delta = subspace::is_matrix(input) ? core_merge(tasks, based) : subspace::mean_of(tasks);
			for (float& d : delta)
				d = static_cast<float>(weight * d);
			subspace::write_base_plus(based, delta, out);
		});
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned) const override {
		if (!row_panels_stream(elements, source_count)) return nullptr;
		return core_space_rows_block_merge(input, source_count, elements);
	}

	// CoreSpaceGram's Gram matrices and an eigensolver's copy (the SVD path's matrices are small).
	uint64_t working_bytes(const MergeInput& input, size_t source_count, uint64_t) const override {
		const size_t tasks = source_count - 1; // without a base, the first source serves as one
		if (source_count < 2 || !keeps_every_direction(input, tasks)) return 0;
		return row_panel_working_bytes(tasks, input.shape[0], input.shape[1], tasks + 2);
	}

private:
	MethodInfo info_;

	// U_B (U_Bᵀ D̄ V_A) V_Aᵀ with D̄ the mean of the rank-r task vectors: the average of the cores
	// mapped back, since projecting is linear.
	static std::vector<float> core_merge(const std::vector<linalg::MatrixF>& tasks, const MergeInput& input) {
		const size_t rows = tasks[0].rows, cols = tasks[0].cols, r = core_rank(rows, cols);
		const size_t rank = std::min({r, rows, cols});
		linalg::MatrixF b_cat(rows, tasks.size() * rank), a_cat(tasks.size() * rank, cols), mean_low(rows, cols);
		for (size_t t = 0; t < tasks.size(); ++t) {
			const uint64_t key = random_stream_key(input.random_seed, input.tensor_name, t);
			const linalg::Svd<float> s = linalg::truncated_svd(tasks[t], rank, key);
			linalg::MatrixF b(rows, rank), a(rank, cols);
			for (size_t k = 0; k < rank; ++k) {
				for (size_t i = 0; i < rows; ++i)
					b_cat(i, t * rank + k) = b(i, k) = s.U(i, k);
				for (size_t j = 0; j < cols; ++j)
					a_cat(t * rank + k, j) = a(k, j) = s.S[k] * s.Vt(k, j);
			}
			linalg::add_product(mean_low, b, false, a, false);
		}
		for (float& x : mean_low.data)
			x /= static_cast<float>(tasks.size());
		const linalg::MatrixF u_b = linalg::svd(b_cat).U;     // rows × min(rows, N·r)
		const linalg::MatrixF v_a_t = linalg::svd(a_cat).Vt;  // min(cols, N·r) × cols
		const size_t common = std::min(u_b.cols, v_a_t.rows); // mergekit's common_rank
		const linalg::MatrixF u = first_columns(u_b, common);
		linalg::MatrixF vt(common, cols);
		std::copy_n(v_a_t.data.begin(), common * cols, vt.data.begin());
		const linalg::MatrixF core = linalg::matmul(linalg::matmul(u, true, mean_low, false), false, vt, true);
		return linalg::matmul(linalg::matmul(u, false, core, false), false, vt, false).data;
	}
};

} // namespace

std::unique_ptr<BlockMerge> core_space_rows_block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
                                                        size_t panel_rows) {
	if (source_count < 2 || !streams_as_rows(input, elements, 0)) return nullptr;
	MergeInput based = input;
	if (based.base_index < 0) based.base_index = 0;
	const TaskVectors tasks = TaskVectors::of(based, source_count);
	if (!keeps_every_direction(input, tasks.models.size())) return nullptr;
	return stream_row_panels(std::make_unique<CoreSpaceGram>(tasks.models.size(), input.shape[0], input.shape[1]),
	                         tasks, global_param(core_space_method().info(), input, "weight"), input.shape[0],
	                         input.shape[1], panel_rows);
}

const MergeMethod& core_space_method() {
	static const CoreSpaceMethod method;
	return method;
}

} // namespace weld
