// RegMean (Jin et al. 2023): each linear map y = x Wᵀ is merged in closed form, as the W that
// best reproduces every model's outputs on its own data:
//   W* = argmin Σ_i ||X_i Wᵀ - X_i W_iᵀ||²  =>  W*ᵀ = (Σ G̃_i)⁻¹ Σ G̃_i W_iᵀ,
// with G_i = X_iᵀX_i / N_i from `weld stats --kind gram` and G̃_i = G_i with its off-diagonal
// entries scaled by alpha (the paper's regularization toward the plain average: alpha 0 gives a
// per-input-feature weighted average). Solved with LAPACK (Cholesky, else LU), never by
// inverting. Tensors without Gram matrices (norms, embeddings) are averaged.
#include "methods/regmean.h"
#include "linalg/linalg.h"
#include "methods/methods.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>

namespace weld {
namespace {

class RegMeanMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const auto models = model_indices(input);
		size_t with_gram = 0;
		for (size_t i : models)
			with_gram += input.statistics.size() > i && !input.statistics[i].empty();
		if (with_gram == 0) {
			for (size_t j = 0; j < out.size(); ++j) {
				double sum = 0;
				for (size_t i : models)
					sum += input.sources[i][j];
				out[j] = static_cast<float>(sum / static_cast<double>(models.size()));
			}
			return;
		}
		if (with_gram != models.size() || input.shape.size() != 2)
			throw Error(fmt::format("tensor '{}': {} of {} models have a Gram matrix for it; RegMean needs all or none",
			                        input.tensor_name, with_gram, models.size()));
		solve(input, models, out);
	}

private:
	void solve(const MergeInput& input, const std::vector<size_t>& models, std::span<float> out) const {
		std::vector<std::span<const float>> weights, grams;
		for (size_t i : models) {
			weights.push_back(input.sources[i]);
			grams.push_back(input.statistics[i]);
		}
		try {
			const bool used_lu =
			    regmean_solve(weights, grams, input.shape[0], input.shape[1], global_param(info_, input, "alpha"), out);
			if (input.notes)
				input.notes->push_back(used_lu ? "Gram sum not positive definite: solved by LU" : "Cholesky");
		} catch (const Error& e) {
			throw Error(fmt::format("tensor '{}': RegMean: {}", input.tensor_name, e.what()));
		}
	}

	MethodInfo info_{
	    .name = "regmean",
	    .description = "Closed-form merge of each linear layer matching every model's outputs on its data (weld stats "
	                   "--kind gram); other tensors averaged",
	    .reference = "https://arxiv.org/abs/2212.09849",
	    .global_params = {{.name = "alpha",
	                       .default_value = 0.9,
	                       .help = "Scale of the Gram matrices' off-diagonal entries (0: per-feature average, 1: "
	                               "exact least squares)",
	                       .min_value = 0,
	                       .max_value = 1}},
	    .model_params = statistics_source_params("Folder of this model's Gram matrices (weld stats --kind gram)"),
	    .base = BaseModel::Ignored,
	    .statistics = "gram",
	};
};

} // namespace

bool regmean_solve(const std::vector<std::span<const float>>& weights, const std::vector<std::span<const float>>& grams,
                   size_t rows, size_t cols, double alpha, std::span<float> out) {
	// Σ G̃_i and Σ G̃_i W_iᵀ, the latter accumulated in place: besides it, one float64 copy of a
	// model's W at a time and the solution (which replaces it).
	linalg::MatrixD a(cols, cols), b(cols, rows);
	for (size_t i = 0; i < weights.size(); ++i) {
		linalg::MatrixD g(cols, cols);
		for (size_t r = 0; r < cols; ++r)
			for (size_t c = 0; c < cols; ++c)
				g(r, c) = static_cast<double>(grams[i][r * cols + c]) * (r == c ? 1.0 : alpha);
		for (size_t k = 0; k < cols * cols; ++k)
			a.data[k] += g.data[k];
		linalg::MatrixD w(rows, cols);
		std::copy(weights[i].begin(), weights[i].end(), w.data.begin());
		linalg::add_product(b, g, false, w, true);
	}
	bool used_lu = false;
	const auto x = linalg::solve_symmetric(std::move(a), std::move(b), &used_lu);
	for (size_t r = 0; r < rows; ++r)
		for (size_t c = 0; c < cols; ++c)
			out[r * cols + c] = static_cast<float>(x(c, r));
	return used_lu;
}

const MergeMethod& regmean_method() {
	static const RegMeanMethod method;
	return method;
}

} // namespace weld
