// DOGE (Wei et al. 2025, "Modeling Multi-Task Model Merging as Adaptive Projective Gradient
// Descent"), task-arithmetic form as in FusionBench's doge_ta: per matrix, task vectors get
// coefficients λ_i = lambda / ‖τ_i‖; a shared modification δ minimises the data-free gap proxy
//   L(δ) = Σ_i Σ_rows ( ⟨τ_i[r], τ_i[r] − Σ_j λ_j (τ_j[r] + δ[r])⟩ )²
// by Adam, with each gradient projected off the shared subspace (top left singular vectors of
// the concatenated per-task top singular vectors). Result: base + Σ_i λ_i (τ_i + δ) ⊙ mask_i,
// mask_i keeping the top `density` of |τ_i|.
#include "methods/methods.h"
#include "methods/subspace_util.h"
#include "tensor/lane_sum.h"

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

struct DogeParams {
	double lambda, density, lr;
	size_t subspace, steps;
};

class DogeMethod final : public MergeMethod {
public:
	DogeMethod() {
		info_ = {
		    .name = "doge",
		    .description = "Data-free projective gradient descent on a shared task-vector modification",
		    .reference = "https://arxiv.org/abs/2501.01230",
		    .global_params = {{.name = "lambda",
		                       .default_value = 0.07,
		                       .help = "Coefficient numerator: task i is weighted lambda / ||tau_i|| per tensor",
		                       .min_value = 0},
		                      {.name = "density",
		                       .default_value = 0.3,
		                       .help = "Fraction of each task vector kept (top by magnitude) in the final sum",
		                       .min_value = 0,
		                       .max_value = 1,
		                       .min_exclusive = true},
		                      {.name = "subspace",
		                       .default_value = 6,
		                       .help = "Shared subspace rank is min(rows, cols) / subspace",
		                       .min_value = 1},
		                      {.name = "steps", .default_value = 400, .help = "Adam steps per tensor", .min_value = 0},
		                      {.name = "lr",
		                       .default_value = 1e-4,
		                       .help = "Adam learning rate",
		                       .min_value = 0,
		                       .min_exclusive = true}},
		    .model_params = {},
		    .base = BaseModel::Required,
		    .min_sources = 2,
		};
	}

	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const DogeParams p{global_param(info_, input, "lambda"), global_param(info_, input, "density"),
		                   global_param(info_, input, "lr"),
		                   static_cast<size_t>(std::floor(global_param(info_, input, "subspace"))),
		                   static_cast<size_t>(std::floor(global_param(info_, input, "steps")))};
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		// As in the reference, only weight matrices are merged; the rest keeps the base values.
		if (!subspace::is_matrix(input)) {
			std::copy(base.begin(), base.end(), out.begin());
			return;
		}
		subspace::naming_tensor(input, info_.name, [&] {
			const std::vector<linalg::MatrixF> tasks = subspace::task_matrices(input);
			std::vector<double> lambdas;
			for (const auto& t : tasks) {
				double sq = 0;
				for (float v : t.data)
					sq += static_cast<double>(v) * v;
				lambdas.push_back(sq > 0 ? p.lambda / std::sqrt(sq) : 0.0);
			}
			const std::vector<float> delta = optimise(tasks, lambdas, shared_basis(tasks, p, input), p);
			std::vector<double> sum(out.size(), 0.0);
			for (size_t i = 0; i < tasks.size(); ++i) {
				const std::vector<bool> keep = top_mask(tasks[i].data, p.density);
				for (size_t j = 0; j < sum.size(); ++j)
					if (keep[j]) sum[j] += lambdas[i] * (static_cast<double>(tasks[i].data[j]) + delta[j]);
			}
			for (size_t j = 0; j < out.size(); ++j)
				out[j] = static_cast<float>(base[j] + sum[j]);
		});
	}

private:
	MethodInfo info_;

	// Q (m × c): the top c = min(m, n) / subspace left singular vectors of the TSV-style
	// concatenation of every task's top singular vectors. Empty when c = 0.
	static linalg::MatrixF shared_basis(const std::vector<linalg::MatrixF>& tasks, const DogeParams& p,
	                                    const MergeInput& input) {
		const size_t m = tasks[0].rows, n = tasks[0].cols;
		const size_t k = subspace::rank_share(m, n, tasks.size());
		const linalg::Svd<float> cat = subspace::concatenated_factors(tasks, k, input, input.notes);
		const linalg::MatrixF u = linalg::svd(cat.U).U;
		const size_t c = std::min(std::min(m, n) / p.subspace, u.cols);
		linalg::MatrixF q(m, c);
		for (size_t r = 0; r < m; ++r)
			std::copy_n(u.data.data() + r * u.cols, c, q.data.data() + r * c); // c may be 0
		return q;
	}

	// Adam on δ (PyTorch's update: betas 0.9/0.999, eps 1e-8, no weight decay), starting at 0.
	static std::vector<float> optimise(const std::vector<linalg::MatrixF>& tasks, const std::vector<double>& lambdas,
	                                   const linalg::MatrixF& q, const DogeParams& p) {
		const size_t m = tasks[0].rows, n = tasks[0].cols;
		double lambda_sum = 0;
		std::vector<double> merged(m * n, 0.0); // Σ λ_j τ_j
		for (size_t i = 0; i < tasks.size(); ++i) {
			lambda_sum += lambdas[i];
			for (size_t j = 0; j < merged.size(); ++j)
				merged[j] += lambdas[i] * tasks[i].data[j];
		}
		std::vector<float> delta(m * n, 0.0f), first(m * n, 0.0f), second(m * n, 0.0f);
		// A basis of all of R^m leaves no direction to move in; skipping keeps Adam from
		// normalising the rounding residue of the projection into full-size steps.
		if (q.cols >= m) return delta;
		linalg::MatrixF grad(m, n), coordinates(q.cols, n); // allocated once: every step reuses them
		constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;
		for (size_t step = 1; step <= p.steps; ++step) {
			gradient(tasks, merged, delta, lambda_sum, grad);
			if (q.cols > 0) { // grad -= Q Qᵀ grad, as grad += Q (−Qᵀ grad): no m × n temporary
				std::fill(coordinates.data.begin(), coordinates.data.end(), 0.0f);
				linalg::add_product(coordinates, q, true, grad, false);
				for (float& c : coordinates.data)
					c = -c;
				linalg::add_product(grad, q, false, coordinates, false);
			}
			const double c1 = 1 - std::pow(kBeta1, static_cast<double>(step));
			const double c2 = 1 - std::pow(kBeta2, static_cast<double>(step));
			for (size_t j = 0; j < delta.size(); ++j) {
				const double g = grad.data[j];
				first[j] = static_cast<float>(kBeta1 * first[j] + (1 - kBeta1) * g);
				second[j] = static_cast<float>(kBeta2 * second[j] + (1 - kBeta2) * g * g);
				const double denom = std::sqrt(static_cast<double>(second[j])) / std::sqrt(c2) + kEps;
				delta[j] = static_cast<float>(delta[j] - p.lr / c1 * first[j] / denom);
			}
		}
		return delta;
	}

	// dL/dδ[r, c] = −2 Λ Σ_i e_ir τ_i[r, c], e_ir = ⟨τ_i[r], τ_i[r] − merged[r] − Λ δ[r]⟩.
	// Each row's e_ir is summed in lane_sum's fixed order.
	static void gradient(const std::vector<linalg::MatrixF>& tasks, const std::vector<double>& merged,
	                     const std::vector<float>& delta, double lambda_sum, linalg::MatrixF& grad) {
		const size_t n = grad.cols;
		std::fill(grad.data.begin(), grad.data.end(), 0.0f);
		for (size_t r = 0; r < grad.rows; ++r)
			for (const auto& t : tasks) {
				const float* x = t.data.data() + r * n;
				const double* mixed = merged.data() + r * n;
				const float* shift = delta.data() + r * n;
				const double e =
				    lane_sum(n, [&](size_t c) { return x[c] * (x[c] - mixed[c] - lambda_sum * shift[c]); });
				float* g = grad.data.data() + r * n;
				for (size_t c = 0; c < n; ++c)
					g[c] += static_cast<float>(-2 * lambda_sum * e * x[c]);
			}
	}

	// Reference rule: with k = d − floor(d · density), keep |x| >= the k-th smallest |x|.
	static std::vector<bool> top_mask(const std::vector<float>& x, double density) {
		const size_t d = x.size();
		const auto drop = d - static_cast<size_t>(std::floor(static_cast<double>(d) * density));
		if (drop == 0) return std::vector<bool>(d, true);
		std::vector<float> mags(d);
		for (size_t j = 0; j < d; ++j)
			mags[j] = std::fabs(x[j]);
		std::nth_element(mags.begin(), mags.begin() + static_cast<ptrdiff_t>(drop - 1), mags.end());
		const float threshold = mags[drop - 1];
		std::vector<bool> keep(d);
		for (size_t j = 0; j < d; ++j)
			keep[j] = std::fabs(x[j]) >= threshold;
		return keep;
	}
};

} // namespace

const MergeMethod& doge_method() {
	static const DogeMethod method;
	return method;
}

} // namespace weld
