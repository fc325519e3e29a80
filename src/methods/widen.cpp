// WIDEN, weight disentanglement (Yu et al. 2024, "Extend Model Merging from Fine-Tuned to
// Pre-Trained Large Language Models via Weight Disentanglement"): each weight column splits into
// a magnitude (its L2 norm) and a direction (the unit column). How far each model moved from the
// base in each, ranked within the model, gives per-column importance scores across models (a
// softmax, with the above-average ones calibrated to a fixed value) that weight the task vectors.
#include "methods/methods.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace weld {
namespace {

struct Calibration {
	double above_average_ratio;
	double value;
};

// Position of each value in a stable ascending sort, divided by the count: 0, 1/n, ..., (n-1)/n.
std::vector<double> rank_within_model(const std::vector<double>& values) {
	std::vector<size_t> order(values.size());
	std::iota(order.begin(), order.end(), size_t{0});
	std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return values[a] < values[b]; });
	std::vector<double> rank(values.size());
	for (size_t r = 0; r < order.size(); ++r)
		rank[order[r]] = static_cast<double>(r) / static_cast<double>(values.size());
	return rank;
}

// significance[i][g] for model i and group g -> scores[i][g]: softmax over the models, except
// where a model's significance exceeds its own mean (over groups) times the ratio, which gets
// the calibration value instead.
std::vector<std::vector<double>> importance_scores(const std::vector<std::vector<double>>& significance,
                                                   Calibration calibration) {
	const size_t n = significance.size(), groups = significance[0].size();
	std::vector<std::vector<double>> scores(n, std::vector<double>(groups));
	for (size_t g = 0; g < groups; ++g) {
		double top = -INFINITY, sum = 0;
		for (size_t i = 0; i < n; ++i)
			top = std::max(top, significance[i][g]);
		for (size_t i = 0; i < n; ++i)
			sum += scores[i][g] = std::exp(significance[i][g] - top);
		for (size_t i = 0; i < n; ++i)
			scores[i][g] /= sum;
	}
	for (size_t i = 0; i < n; ++i) {
		const double mean =
		    std::accumulate(significance[i].begin(), significance[i].end(), 0.0) / static_cast<double>(groups);
		for (size_t g = 0; g < groups; ++g)
			if (significance[i][g] > mean * calibration.above_average_ratio) scores[i][g] = calibration.value;
	}
	return scores;
}

// The embedding matrix is [vocab, hidden]; the reference transposes it so that a "column" is
// one token's vector, as for the [out, in] linear weights where a column is one input's weights.
bool is_token_embedding(std::string_view name) {
	return name.find("embed_tokens") != std::string_view::npos || name.find("wte") != std::string_view::npos ||
	       name.find("word_embeddings") != std::string_view::npos;
}

class WidenMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const Calibration calibration{global_param(info_, input, "above_average_value_ratio"),
		                              global_param(info_, input, "score_calibration_value")};
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		std::vector<std::span<const float>> tasks;
		for (size_t i = 0; i < input.sources.size(); ++i)
			if (static_cast<int>(i) != input.base_index) tasks.push_back(input.sources[i]);
		if (out.empty()) return;
		if (input.shape.size() < 2 || input.shape[0] == 0)
			merge_elementwise(base, tasks, calibration, out);
		else
			merge_columns(input, base, tasks, calibration, out);
	}

private:
	// Vectors (norms, biases): significance is |task vector| per element, not ranked.
	static void merge_elementwise(std::span<const float> base, const std::vector<std::span<const float>>& tasks,
	                              Calibration calibration, std::span<float> out) {
		std::vector<std::vector<double>> significance(tasks.size(), std::vector<double>(out.size()));
		for (size_t i = 0; i < tasks.size(); ++i)
			for (size_t j = 0; j < out.size(); ++j)
				significance[i][j] = std::fabs(static_cast<double>(tasks[i][j]) - base[j]);
		const auto scores = importance_scores(significance, calibration);
		for (size_t j = 0; j < out.size(); ++j) {
			double delta = 0;
			for (size_t i = 0; i < tasks.size(); ++i)
				delta += scores[i][j] * (static_cast<double>(tasks[i][j]) - base[j]);
			out[j] = static_cast<float>(base[j] + delta);
		}
	}

	// Matrices: one group per column (per row for token embeddings); trailing dimensions of
	// higher-rank tensors are flattened into the columns.
	static void merge_columns(const MergeInput& input, std::span<const float> base,
	                          const std::vector<std::span<const float>>& tasks, Calibration calibration,
	                          std::span<float> out) {
		const size_t rows = input.shape[0], cols = out.size() / rows;
		const bool transposed = is_token_embedding(input.tensor_name);
		const size_t groups = transposed ? rows : cols, length = transposed ? cols : rows;
		const auto at = [&](size_t g, size_t k) { return transposed ? g * cols + k : k * cols + g; };
		std::vector<std::vector<double>> magnitude(tasks.size()), direction(tasks.size());
		for (size_t i = 0; i < tasks.size(); ++i) {
			std::vector<double> magnitude_diff(groups), direction_diff(groups);
			for (size_t g = 0; g < groups; ++g) {
				double bb = 0, tt = 0, bt = 0;
				for (size_t k = 0; k < length; ++k) {
					const double b = base[at(g, k)], t = tasks[i][at(g, k)];
					bb += b * b, tt += t * t, bt += b * t;
				}
				magnitude_diff[g] = std::fabs(std::sqrt(tt) - std::sqrt(bb));
				// Zero columns: two zeros point the same way; a zero and a non-zero do not.
				const double cos = bb > 0 && tt > 0 ? bt / std::sqrt(bb * tt) : (bb == tt ? 1.0 : 0.0);
				direction_diff[g] = 1.0 - cos;
			}
			magnitude[i] = rank_within_model(magnitude_diff);
			direction[i] = rank_within_model(direction_diff);
		}
		const auto magnitude_scores = importance_scores(magnitude, calibration);
		const auto direction_scores = importance_scores(direction, calibration);
		for (size_t g = 0; g < groups; ++g)
			for (size_t k = 0; k < length; ++k) {
				const size_t j = at(g, k);
				double delta = 0;
				for (size_t i = 0; i < tasks.size(); ++i)
					delta += 0.5 * (magnitude_scores[i][g] + direction_scores[i][g]) *
					         (static_cast<double>(tasks[i][j]) - base[j]);
				out[j] = static_cast<float>(base[j] + delta);
			}
	}

	MethodInfo info_{
	    .name = "widen",
	    .description = "Weight disentanglement: magnitude/direction changes rank the task vectors per column",
	    .reference = "https://arxiv.org/abs/2408.03092",
	    .global_params = {{.name = "above_average_value_ratio",
	                       .default_value = 1.0,
	                       .help = "Significance above this times the model's mean gets the calibration score"},
	                      {.name = "score_calibration_value",
	                       .default_value = 1.0,
	                       .help = "Score given to the above-average parameters"}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .min_sources = 2,
	};
};

} // namespace

const MergeMethod& widen_method() {
	static const WidenMethod method;
	return method;
}

} // namespace weld
