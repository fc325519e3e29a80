// PCB-Merging, Parameter Competition Balancing (Du et al., NeurIPS 2024): every task vector
// element gets a score from its weight within its own task (intra-balancing) and its agreement
// with the other tasks (inter-balancing); only the top `ratio` of each task's scores survive and
// the task vectors are averaged with the surviving scores as weights.
#include "methods/methods.h"

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

// Min-max normalisation to [0, 1] over the whole tensor; a constant input maps to all zeros.
struct MinMax {
	double lo = INFINITY, hi = -INFINITY;
	void add(double v) { lo = std::min(lo, v), hi = std::max(hi, v); }
	double norm(double v) const { return hi > lo ? (v - lo) / (hi - lo) : 0.0; }
};

// One tensor's computation: the base, the task models and a scratch buffer.
class Balancer {
public:
	explicit Balancer(const MergeInput& input) : base_(input.sources[static_cast<size_t>(input.base_index)]) {
		for (size_t i = 0; i < input.sources.size(); ++i)
			if (static_cast<int>(i) != input.base_index) tasks_.push_back(input.sources[i]);
	}

	void merge(double ratio, double lambda, std::span<float> out) {
		const size_t n = tasks_.size(), d = out.size();
		// beta[i * d + j]: the balancing score of task i at element j (inter, then times intra).
		std::vector<float> beta(n * d, 0.0f);
		for (size_t i = 0; i < n; ++i)
			for (size_t k = i; k < n; ++k)
				add_inter(i, k, beta);
		for (size_t i = 0; i < n; ++i) {
			const std::span<float> row(beta.data() + i * d, d);
			multiply_intra(i, row);
			drop_low_scores(row, ratio);
		}
		for (size_t j = 0; j < d; ++j) {
			double weighted = 0, weights = 0;
			for (size_t i = 0; i < n; ++i) {
				weighted += beta[i * d + j] * tau(i, j);
				weights += beta[i * d + j];
			}
			const double merged = weights > 0 ? weighted / weights : 0.0;
			out[j] = static_cast<float>(base_[j] + lambda * merged);
		}
	}

private:
	double tau(size_t i, size_t j) const { return static_cast<double>(tasks_[i][j]) - base_[j]; }

	// softmax over the tensor's elements of scale * norm(value(j)), times the element count so
	// scores stay near 1 in float32 (a factor common to every task: it cancels in the average).
	template <typename F> void softmax_norm(size_t d, double scale, F value) {
		MinMax range;
		for (size_t j = 0; j < d; ++j)
			range.add(value(j));
		scratch_.resize(d);
		double sum = 0;
		for (size_t j = 0; j < d; ++j)
			sum += scratch_[j] = std::exp(scale * (range.norm(value(j)) - 1.0));
		for (double& v : scratch_)
			v *= static_cast<double>(d) / sum;
	}

	// inter_i = sum_k softmax(norm(tau_i * tau_k)); the term is symmetric, so add it to both.
	void add_inter(size_t i, size_t k, std::vector<float>& beta) {
		const size_t d = base_.size();
		softmax_norm(d, 1.0, [&](size_t j) { return tau(i, j) * tau(k, j); });
		for (size_t j = 0; j < d; ++j) {
			beta[i * d + j] += static_cast<float>(scratch_[j]);
			if (k != i) beta[k * d + j] += static_cast<float>(scratch_[j]);
		}
	}

	// intra_i = softmax(N * norm(tau_i^2)).
	void multiply_intra(size_t i, std::span<float> row) {
		softmax_norm(row.size(), static_cast<double>(tasks_.size()), [&](size_t j) { return tau(i, j) * tau(i, j); });
		for (size_t j = 0; j < row.size(); ++j)
			row[j] = static_cast<float>(row[j] * scratch_[j]);
	}

	// Keeps the scores at or above the one at sorted position floor((1 - ratio) * d), as the
	// reference's clamp at that quantile does; the rest are dropped (weight 0).
	static void drop_low_scores(std::span<float> row, double ratio) {
		if (row.empty() || ratio >= 1) return;
		std::vector<float> sorted(row.begin(), row.end());
		const auto pos =
		    std::min(static_cast<size_t>(std::floor((1 - ratio) * static_cast<double>(row.size()))), row.size() - 1);
		std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(pos), sorted.end());
		const float threshold = sorted[pos];
		for (float& v : row)
			if (v < threshold) v = 0.0f;
	}

	std::span<const float> base_;
	std::vector<std::span<const float>> tasks_;
	std::vector<double> scratch_;
};

class PcbMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		Balancer(input).merge(global_param(info_, input, "ratio"), global_param(info_, input, "lambda"), out);
	}

private:
	MethodInfo info_{
	    .name = "pcb",
	    .description = "Parameter Competition Balancing: intra/inter-task scores weight the task vectors",
	    .reference = "https://arxiv.org/abs/2410.02396",
	    .global_params = {{.name = "ratio",
	                       .default_value = 0.1,
	                       .help = "Fraction of each task's balancing scores kept (the rest are dropped)",
	                       .min_value = 0,
	                       .max_value = 1,
	                       .min_exclusive = true},
	                      {.name = "lambda", .default_value = 1.0, .help = "Scale of the merged task vector"}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .min_sources = 2,
	};
};

} // namespace

const MergeMethod& pcb_method() {
	static const PcbMethod method;
	return method;
}

} // namespace weld
