// LRP merge as mergekit's open pull request #677 (lrp.py) defines it: each task vector keeps its
// k = max(1, ⌊density · n⌋) entries of highest importance, the rest zeroed, and the kept task
// vectors are averaged with weights wᵢ / Σw onto the base (zeros when there is none). Importance
// is the model's layer-wise relevance (its `lrp_path` file) where given, else |Δᵢ|.
#include "methods/methods.h"
#include "methods/reference.h"
#include "tensor/kernels.h"
#include "tensor/topk.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

namespace weld {
namespace {

// The streaming form where importance is |delta| (no relevance): statistics passes 0 to 2, each
// model's exact top-k selection; the output pass recomputes the block's deltas, keeps the
// selected ones and adds them in merge_whole's order: the same bytes.
class LrpBlocks final : public BlockMerge {
public:
	struct Model {
		size_t index;                         // into the block's sources
		double share;                         // weight / the weights' sum
		std::unique_ptr<TopKSelection> top_k; // nullptr: keeps none
	};

	LrpBlocks(std::vector<Model> models, int base, unsigned workers)
	    : models_(std::move(models)), base_(base), scratch_(workers) {}

	int stat_passes() const override { return TopKSelection::kPasses; }

	bool wants_pass(int pass) const override {
		return std::ranges::any_of(models_, [&](const Model& m) { return m.top_k && m.top_k->wants_pass(pass); });
	}

	void observe(int pass, const Block& block, unsigned worker) override {
		for (const Model& m : models_)
			if (m.top_k && m.top_k->wants_pass(pass))
				m.top_k->observe(pass, block.index, delta(block, m, worker), worker);
	}

	void end_pass(int pass) override {
		for (const Model& m : models_)
			if (m.top_k && m.top_k->wants_pass(pass)) m.top_k->end_pass(pass);
	}

	void merge(const Block& block, std::span<float> out, unsigned worker) override {
		std::vector<double>& merged = scratch_[worker].merged;
		std::fill_n(merged.begin(), out.size(), 0.0);
		for (const Model& m : models_) {
			// Keeping none adds only zeros, which change no sum.
			if (!m.top_k) continue;
			const std::span<float> d = delta(block, m, worker);
			m.top_k->apply(block.index, d);
			for (size_t j = 0; j < out.size(); ++j)
				merged[j] += m.share * d[j];
		}
		for (size_t j = 0; j < out.size(); ++j)
			out[j] = static_cast<float>(base_at(block, j) + merged[j]);
	}

private:
	struct Scratch {
		std::vector<float> delta = std::vector<float>(kBlockElements);
		std::vector<double> merged = std::vector<double>(kBlockElements);
	};
	std::vector<Model> models_;
	int base_;
	std::vector<Scratch> scratch_; // per worker

	float base_at(const Block& block, size_t j) const {
		return base_ < 0 ? 0.0f : block.sources[static_cast<size_t>(base_)][j];
	}

	std::span<float> delta(const Block& block, const Model& m, unsigned worker) {
		const std::span<float> d(scratch_[worker].delta.data(), block.size());
		for (size_t j = 0; j < d.size(); ++j)
			d[j] = block.sources[m.index][j] - base_at(block, j);
		return d;
	}
};

class LrpMethod final : public MergeMethod, public WholeTensorReference {
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
		// Relevance orders the whole tensor by value (a stable sort): not streamed.
		if (std::ranges::any_of(input.statistics, [](std::span<const float> s) { return !s.empty(); }))
			return merge_whole(input, out);
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned workers) const override {
		check_source_count(info_, input, source_count);
		std::vector<size_t> models = model_indices(input, source_count);
		const double total = total_weight(input, models);
		const size_t keep = kept_count(global_param(info_, input, "density"), elements);
		workers = std::max(1u, workers);
		std::vector<LrpBlocks::Model> kept;
		for (size_t s : models) {
			auto& m = kept.emplace_back(LrpBlocks::Model{
			    .index = s, .share = *source_param(info_, input, s, "weight") / total, .top_k = nullptr});
			if (keep > 0) m.top_k = std::make_unique<TopKSelection>(elements, keep, block_count(elements), workers);
		}
		return std::make_unique<LrpBlocks>(std::move(kept), input.base_index, workers);
	}

	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const std::vector<size_t> models = model_indices(input);
		const double total = total_weight(input, models);
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

	// The models' weights' sum; throws where there is no model or it is 0.
	double total_weight(const MergeInput& input, const std::vector<size_t>& models) const {
		if (models.empty())
			throw Error(fmt::format("tensor '{}': lrp needs a model besides the base", input.tensor_name));
		double total = 0;
		for (size_t s : models)
			total += *source_param(info_, input, s, "weight");
		if (total == 0) throw Error(fmt::format("tensor '{}': lrp: the models' weights sum to 0", input.tensor_name));
		return total;
	}

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
