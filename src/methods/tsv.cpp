// Task Singular Vectors merging (TSV-M, Gargiulo et al., CVPR 2025): each matrix task vector
// keeps its top 1/N of singular triplets; the concatenated U's and V's are orthogonalised
// (polar factor) to remove the interference between tasks, and the merged delta is
// U⊥ diag(Σ) V⊥ᵀ. Other tensors take the mean task vector.
#include "methods/methods.h"
#include "methods/subspace_util.h"

namespace weld {
namespace {

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

const MergeMethod& tsv_method() {
	static const TsvMethod method;
	return method;
}

} // namespace weld
