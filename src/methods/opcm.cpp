// OPCM, continual merging by orthogonal projection (Tang et al. 2025): models are merged one at
// a time in recipe order. Each new matrix task vector τ is expressed in the singular bases of
// the merged delta so far (P = Uᵀ τ V); its diagonal, and the top-left r×r block where the top
// r singular values hold more than `alpha` of the singular mass, are removed before adding
// U P Vᵀ. Finally the merged delta is rescaled to the mean norm of the task vectors.
#include "methods/methods.h"
#include "methods/subspace_util.h"

#include <cmath>

namespace weld {
namespace {

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
		const double alpha = global_param(info_, input, "alpha");
		subspace::naming_tensor(input, info_.name, [&] {
			// One task vector at a time keeps memory independent of the number of models.
			linalg::MatrixF merged;
			double norm_sum = 0;
			size_t count = 0;
			for (size_t i = 0; i < input.sources.size(); ++i) {
				if (static_cast<int>(i) == input.base_index) continue;
				const linalg::MatrixF task = subspace::task_matrix(input, i);
				norm_sum += frobenius(task);
				if (count++ == 0)
					merged = task;
				else if (subspace::is_matrix(input))
					add_projected(merged, task, alpha);
				else
					for (size_t j = 0; j < merged.data.size(); ++j)
						merged.data[j] += task.data[j];
			}
			// Adaptive scaling: the merged delta keeps the mean task-vector norm.
			const double norm = frobenius(merged), target = norm_sum / static_cast<double>(count);
			const double scale = norm > 0 ? target / norm : 0.0;
			for (float& d : merged.data)
				d = static_cast<float>(scale * d);
			subspace::write_base_plus(input, merged.data, out);
		});
	}

private:
	MethodInfo info_;

	static double frobenius(const linalg::MatrixF& m) {
		double sum = 0;
		for (float v : m.data)
			sum += static_cast<double>(v) * v;
		return std::sqrt(sum);
	}

	// Number of leading singular values before the cumulative share first exceeds alpha.
	static size_t split_rank(const std::vector<float>& s, double alpha) {
		double total = 0, running = 0;
		for (float v : s)
			total += v;
		if (!(total > 0)) return 0;
		for (size_t i = 0; i < s.size(); ++i) {
			running += s[i];
			if (running / total > alpha) return i;
		}
		return 0; // no share exceeds alpha (alpha = 1): only the diagonal is removed
	}

	// merged += τ − U Z Vᵀ, Z holding the removed entries of P = Uᵀ τ V (thin factors suffice:
	// every removed entry lies within the first min(m, n) rows and columns).
	static void add_projected(linalg::MatrixF& merged, const linalg::MatrixF& task, double alpha) {
		const linalg::Svd<float> s = linalg::svd(merged);
		const size_t k = s.S.size(), r = split_rank(s.S, alpha);
		const linalg::MatrixF p = linalg::matmul(linalg::matmul(s.U, true, task, false), false, s.Vt, true);
		linalg::MatrixF removed(k, k);
		for (size_t i = 0; i < k; ++i)
			for (size_t j = 0; j < k; ++j)
				if (i == j || (i < r && j < r)) removed(i, j) = p(i, j);
		const linalg::MatrixF back = linalg::matmul(linalg::matmul(s.U, false, removed, false), false, s.Vt, false);
		for (size_t j = 0; j < merged.data.size(); ++j)
			merged.data[j] += task.data[j] - back.data[j];
	}
};

} // namespace

const MergeMethod& opcm_method() {
	static const OpcmMethod method;
	return method;
}

} // namespace weld
