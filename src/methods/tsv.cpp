// Task Singular Vectors merging (TSV-M, Gargiulo et al., CVPR 2025): each matrix task vector
// keeps its top 1/N of singular triplets; the concatenated U's and V's are orthogonalised
// (polar factor) to remove the interference between tasks, and the merged delta is
// U⊥ diag(Σ) V⊥ᵀ. Other tensors take the mean task vector.
#include "methods/tsv.h"
#include "methods/methods.h"
#include "methods/row_panels.h"
#include "methods/subspace_util.h"
#include "util/error.h"

#include <fmt/format.h>

namespace weld {
namespace {

// TSV-M of a tall matrix (m ≥ n) without its SVDs, from its rows in panels, in order: each task's
// top-k right singular vectors V_t and values σ_t are the top eigenpairs of its Gram matrix
// Δ_tᵀΔ_t (pass 0), so U_t = Δ_t V_t σ_t⁻¹ = Δ_t A_t; the stacked U = [U_1 … U_N] has polar
// factor U (UᵀU)^(-1/2), and UᵀU = PᵀP with P = [Δ_1 A_1 … Δ_N A_N] (pass 1). The merge
// U⊥ diag(σ) V⊥ᵀ is then, row by row, P[r] R with R = (UᵀU)^(-1/2) diag(σ) polar(Vᵀ). Streamed,
// only n × n matrices are held and the output forms P's rows again; a whole tensor keeps them
// from pass 1 (m × N·k doubles), saving 2 of the 7 + N/2 m n² multiply-adds (N/2: pass 0's
// float32 products). A wide matrix is merged as its transpose (TSV-M commutes with
// transposition: polar(Xᵀ) = polar(X)ᵀ).
class TsvGram final : public RowPanelAlgorithm {
public:
	TsvGram(size_t tasks, uint64_t rows, uint64_t cols, bool keep_rows)
	    : tasks_(tasks), cols_(cols), k_(subspace::rank_share(rows, cols, tasks)), keep_rows_(keep_rows),
	      grams_(tasks, cols) {
		if (keep_rows_) kept_ = linalg::MatrixD(rows, k_ * tasks_);
	}

	int passes() const override { return 2; }

	std::string note() const override {
		return fmt::format("top-{} singular vectors from Gram matrices{}", k_, keep_rows_ ? ", the products kept" : "");
	}

	// Pass 0 sums the Gram matrices (float32 products: only the top eigenpairs are kept), pass 1
	// UᵀU in double (its small eigenvalues are those of nearly dependent tasks).
	void add_panel(const std::vector<linalg::MatrixF>& panel) override {
		if (pass_ == 0) {
			for (size_t t = 0; t < tasks_; ++t)
				grams_.add(t, panel[t]);
			return;
		}
		const linalg::MatrixD stacked = products(panel);
		linalg::add_gram(gram_of_u_, stacked);
		if (keep_rows_) std::copy(stacked.data.begin(), stacked.data.end(), &kept_.data[cursor_ * kept_.cols]);
		cursor_ += stacked.rows;
	}

	void end_pass() override {
		if (pass_++ == 0)
			factor_tasks();
		else
			build_output_operator();
	}

	// In double: R's entries grow as 1 / √λ of UᵀU's smallest kept eigenvalue, and float32 products
	// lost 10⁻⁴ of the delta's norm to that on nearly dependent tasks.
	linalg::MatrixD merged_rows(const std::vector<linalg::MatrixF>& task_rows, uint64_t first_row) const override {
		if (!keep_rows_) return linalg::matmul(products(task_rows), false, output_operator_, false);
		linalg::MatrixD kept(task_rows[0].rows, kept_.cols);
		std::copy_n(&kept_.data[first_row * kept_.cols], kept.data.size(), kept.data.begin());
		return linalg::matmul(kept, false, output_operator_, false);
	}

private:
	// After pass 0: σ_t, V_t and A_t = V_t σ_t⁻¹ of every task; σ below 1e-6 · σ_max of its task
	// (below float32's resolution of the matrix) counts as zero, as its U column is noise.
	void factor_tasks() {
		const size_t width = tasks_ * k_;
		sigma_.assign(width, 0.0);
		stacked_vt_ = linalg::MatrixD(width, cols_);
		for (size_t t = 0; t < tasks_; ++t) {
			linalg::MatrixD gram = grams_.take(t);
			for (const double v : gram.data)
				if (!std::isfinite(v)) throw Error(fmt::format("task vector {} has values that are not finite", t + 1));
			const linalg::Eigenpairs pairs = linalg::top_eigenpairs(std::move(gram), k_);
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
		gram_of_u_ = linalg::MatrixD(width, width);
	}

	// P's rows for these rows of the tasks: [Δ_1 A_1 … Δ_N A_N].
	linalg::MatrixD products(const std::vector<linalg::MatrixF>& panel) const {
		linalg::MatrixD stacked(panel[0].rows, k_ * tasks_);
		for (size_t t = 0; t < tasks_; ++t) {
			const linalg::MatrixD p = linalg::matmul(linalg::to_double(panel[t]), false, a_[t], false);
			for (size_t r = 0; r < p.rows; ++r)
				std::copy_n(&p.data[r * k_], k_, &stacked.data[r * stacked.cols + t * k_]);
		}
		return stacked;
	}

	// After pass 1: R = (UᵀU)^(-1/2) diag(σ) polar(Vᵀ) (N·k × n).
	void build_output_operator() {
		linalg::MatrixD inverse_sqrt = linalg::inverse_sqrt_psd(gram_of_u_, 1e-12);
		gram_of_u_ = {};
		for (size_t r = 0; r < inverse_sqrt.rows; ++r)
			for (size_t c = 0; c < inverse_sqrt.cols; ++c)
				inverse_sqrt(r, c) *= sigma_[c];
		output_operator_ = linalg::matmul(inverse_sqrt, false, linalg::polar_factor_of_rows(stacked_vt_, 1e-12), false);
		stacked_vt_ = {};
		if (keep_rows_) a_.clear();
	}

	size_t tasks_, cols_, k_;
	bool keep_rows_;
	int pass_ = 0;
	linalg::FloatGramSums grams_;
	std::vector<linalg::MatrixD> a_; // A_t = V_t σ_t⁻¹ (n × k)
	std::vector<double> sigma_;
	linalg::MatrixD stacked_vt_, gram_of_u_, output_operator_;
	linalg::MatrixD kept_; // P's rows from pass 1 (whole tensors)
	uint64_t cursor_ = 0;  // the next panel's first row in pass 1
};

// Each model's task vector scaled by its weight.
TaskVectors task_vectors(const MergeInput& input, size_t source_count) {
	std::vector<double> weights;
	for (size_t i : model_indices(input, source_count))
		weights.push_back(*source_param(tsv_method().info(), input, i, "weight"));
	return TaskVectors::of(input, source_count, std::move(weights));
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
		const TaskVectors tasks = task_vectors(input, input.sources.size());
		subspace::naming_tensor(input, info_.name, [&] {
			if (subspace::is_matrix(input)) {
				const size_t count = tasks.models.size();
				return merge_in_row_panels(
				    input, tasks, alpha,
				    [count](uint64_t rows, uint64_t cols) {
					    return std::make_unique<TsvGram>(count, rows, cols, true);
				    },
				    out);
			}
			std::vector<float> delta = subspace::mean_of(subspace::task_matrices(input, tasks.weights));
			for (float& d : delta)
				d = static_cast<float>(alpha * d);
			subspace::write_base_plus(input, delta, out);
		});
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned workers) const override {
		(void)workers;
		if (!row_panels_stream(elements, source_count)) return nullptr;
		return tsv_tall_block_merge(input, source_count, elements);
	}

	// TsvGram's Gram matrices, V's rows, UᵀU and the eigensolvers' copies: N + 8 n × n at most
	// (N·k <= n); a whole tensor's kept products besides (m × N·k doubles, at most m × n).
	uint64_t working_bytes(const MergeInput& input, size_t source_count, uint64_t elements) const override {
		if (!subspace::is_matrix(input)) return 0;
		const size_t tasks = source_count - 1;
		const uint64_t squares = row_panel_working_bytes(tasks, input.shape[0], input.shape[1], tasks + 8);
		const bool streams = row_panels_stream(elements, source_count) && streams_as_rows(input, elements, 0);
		return streams ? squares : squares + input.shape[0] * input.shape[1] * sizeof(double);
	}

private:
	MethodInfo info_;
};

} // namespace

std::unique_ptr<BlockMerge> tsv_tall_block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
                                                 size_t panel_rows) {
	check_source_count(tsv_method().info(), input, source_count);
	if (!streams_as_rows(input, elements, 0)) return nullptr;
	const TaskVectors tasks = task_vectors(input, source_count);
	const size_t count = tasks.models.size();
	return stream_row_panels(std::make_unique<TsvGram>(count, input.shape[0], input.shape[1], false), tasks,
	                         global_param(tsv_method().info(), input, "alpha"), input.shape[0], input.shape[1],
	                         panel_rows);
}

const MergeMethod& tsv_method() {
	static const TsvMethod method;
	return method;
}

} // namespace weld
