// LRP merge as mergekit's open pull request #677 (lrp.py) defines it: each task vector keeps its
// k = max(1, ⌊density · n⌋) entries of highest importance, the rest zeroed, and the kept task
// vectors are averaged with weights wᵢ / Σw onto the base (zeros when there is none). Importance
// is the model's layer-wise relevance (its `lrp_path` file) where given, else |Δᵢ|.
#include "methods/methods.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace weld {
namespace {

class LrpMethod final : public MergeMethod {
public:
	LrpMethod() {
		info_ = {
		    .name = "lrp",
		    .description = "LRP merge: task vectors cut to their top density by relevance (else magnitude), "
		                   "weighted mean",
		    .reference = "https://github.com/arcee-ai/mergekit/pull/677",
		    .global_params = {{.name = "density",
		                       .default_value = 0.7,
		                       .help = "Fraction of each task vector kept, by importance",
		                       .min_value = 0,
		                       .max_value = 1}},
		    .model_params = {{.name = "weight", .default_value = 1.0, .help = "Weight (normalized by their sum)"}},
		    .base = BaseModel::Optional,
		};
	}

	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const std::vector<size_t> models = model_indices(input);
		if (models.empty())
			throw Error(fmt::format("tensor '{}': lrp needs a model besides the base", input.tensor_name));
		double total = 0;
		for (size_t s : models)
			total += *source_param(info_, input, s, "weight");
		if (total == 0) throw Error(fmt::format("tensor '{}': lrp: the models' weights sum to 0", input.tensor_name));
		const size_t keep = kept_count(global_param(info_, input, "density"), out.size());
		std::vector<double> merged(out.size(), 0.0);
		std::vector<float> delta(out.size());
		for (size_t s : models) {
			for (size_t j = 0; j < out.size(); ++j)
				delta[j] = input.sources[s][j] - base_at(input, j);
			const bool has_relevance = s < input.statistics.size() && !input.statistics[s].empty();
			if (has_relevance)
				keep_most_relevant(delta, input.statistics[s], keep);
			else
				keep_top_k_by_magnitude(delta, keep);
			const double share = *source_param(info_, input, s, "weight") / total;
			for (size_t j = 0; j < out.size(); ++j)
				merged[j] += share * delta[j];
		}
		for (size_t j = 0; j < out.size(); ++j)
			out[j] = static_cast<float>(base_at(input, j) + merged[j]);
	}

private:
	MethodInfo info_;

	static float base_at(const MergeInput& input, size_t j) {
		return input.base_index < 0 ? 0.0f : input.sources[static_cast<size_t>(input.base_index)][j];
	}

	// mergekit: none at density <= 0, all at >= 1, else max(1, int(density · n)).
	static size_t kept_count(double density, size_t n) {
		if (density <= 0) return 0;
		if (density >= 1) return n;
		return std::min(n, std::max<size_t>(1, static_cast<size_t>(density * static_cast<double>(n))));
	}

	// Zeroes delta outside the `keep` entries of largest relevance (by value, as mergekit's
	// descending argsort; equal values: lower index first).
	static void keep_most_relevant(std::span<float> delta, std::span<const float> relevance, size_t keep) {
		if (keep >= delta.size()) return;
		std::vector<size_t> order(delta.size());
		std::iota(order.begin(), order.end(), size_t{0});
		std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return relevance[a] > relevance[b]; });
		for (size_t r = keep; r < order.size(); ++r)
			delta[order[r]] = 0.0f;
	}
};

} // namespace

const MergeMethod& lrp_method() {
	static const LrpMethod method;
	return method;
}

} // namespace weld
