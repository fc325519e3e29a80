// Localize-and-Stitch, dataless variant (He et al. 2024): each task keeps only its largest
// changes (mask gamma_i = top `density` of |tau_i|), and the masked task vectors are stitched
// into the base, averaged where masks overlap:
//   theta = theta_0 + sum_i (gamma_i / sum_j gamma_j) * tau_i   (nothing added where no mask is set)
#include "methods/methods.h"
#include "methods/reference.h"
#include "tensor/kernels.h"
#include "tensor/topk.h"

#include <algorithm>
#include <cmath>
#include <memory>

namespace weld {
namespace {

// The top floor(density * d) entries by |tau| (none for a tiny tensor).
size_t localized_count(double density, size_t d) {
	return static_cast<size_t>(std::floor(std::clamp(density, 0.0, 1.0) * static_cast<double>(d)));
}

// The streaming form. Statistics passes 0 to 2: each task's exact top-k selection of |tau|. The
// output pass recomputes the block's task vectors, masks them and averages them as merge_whole
// does, in the same order: the same bytes.
class LocalizeStitchBlocks final : public BlockMerge {
public:
	struct Task {
		size_t index;                         // into the block's sources
		std::unique_ptr<TopKSelection> top_k; // nullptr: nothing is localized
	};

	LocalizeStitchBlocks(std::vector<Task> tasks, size_t base, unsigned workers)
	    : tasks_(std::move(tasks)), base_(base), scratch_(workers) {}

	int stat_passes() const override { return TopKSelection::kPasses; }

	bool wants_pass(int pass) const override {
		return std::ranges::any_of(tasks_, [&](const Task& t) { return t.top_k && t.top_k->wants_pass(pass); });
	}

	void observe(int pass, const Block& block, unsigned worker) override {
		for (const Task& t : tasks_)
			if (t.top_k && t.top_k->wants_pass(pass))
				t.top_k->observe(pass, block.index, task_vector(block, t, worker), worker);
	}

	void end_pass(int pass) override {
		for (const Task& t : tasks_)
			if (t.top_k && t.top_k->wants_pass(pass)) t.top_k->end_pass(pass);
	}

	void merge(const Block& block, std::span<float> out, unsigned worker) override {
		Scratch& s = scratch_[worker];
		const std::span<const float> base = block.sources[base_];
		std::fill_n(s.sum.begin(), out.size(), 0.0);
		std::fill_n(s.count.begin(), out.size(), 0u);
		for (const Task& t : tasks_) {
			if (!t.top_k) continue;
			const std::span<float> localized = task_vector(block, t, worker);
			t.top_k->apply(block.index, localized);
			// A zero change is never part of the mask, as in merge_whole.
			for (size_t j = 0; j < localized.size(); ++j)
				if (localized[j] != 0.0f) s.sum[j] += localized[j], s.count[j]++;
		}
		for (size_t j = 0; j < out.size(); ++j)
			out[j] = s.count[j] == 0 ? base[j] : static_cast<float>(base[j] + s.sum[j] / s.count[j]);
	}

private:
	struct Scratch {
		std::vector<float> tau = std::vector<float>(kBlockElements);
		std::vector<double> sum = std::vector<double>(kBlockElements);
		std::vector<uint32_t> count = std::vector<uint32_t>(kBlockElements);
	};
	std::vector<Task> tasks_;
	size_t base_;
	std::vector<Scratch> scratch_; // per worker

	std::span<float> task_vector(const Block& block, const Task& t, unsigned worker) {
		const std::span<float> tau(scratch_[worker].tau.data(), block.size());
		const std::span<const float> x = block.sources[t.index], base = block.sources[base_];
		for (size_t j = 0; j < tau.size(); ++j)
			tau[j] = x[j] - base[j];
		return tau;
	}
};

class LocalizeStitchMethod final : public MergeMethod, public WholeTensorReference {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned workers) const override {
		check_source_count(info_, input, source_count);
		workers = std::max(1u, workers);
		std::vector<LocalizeStitchBlocks::Task> tasks;
		for (size_t i = 0; i < source_count; ++i) {
			if (static_cast<int>(i) == input.base_index) continue;
			const size_t k = localized_count(*source_param(info_, input, i, "density"), elements);
			auto& task = tasks.emplace_back(LocalizeStitchBlocks::Task{.index = i, .top_k = nullptr});
			if (k > 0) task.top_k = std::make_unique<TopKSelection>(elements, k, block_count(elements), workers);
		}
		return std::make_unique<LocalizeStitchBlocks>(std::move(tasks), static_cast<size_t>(input.base_index), workers);
	}

	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		const size_t d = out.size();
		std::vector<double> sum(d, 0.0);
		std::vector<uint32_t> count(d, 0);
		std::vector<float> localized(d);
		for (size_t i = 0; i < input.sources.size(); ++i) {
			if (static_cast<int>(i) == input.base_index) continue;
			const size_t k = localized_count(*source_param(info_, input, i, "density"), d);
			for (size_t j = 0; j < d; ++j)
				localized[j] = input.sources[i][j] - base[j];
			keep_top_k_by_magnitude(localized, k);
			// A zero change is never part of the mask (the reference selects |tau| > threshold >= 0).
			for (size_t j = 0; j < d; ++j)
				if (localized[j] != 0.0f) sum[j] += localized[j], count[j]++;
		}
		for (size_t j = 0; j < d; ++j)
			out[j] = count[j] == 0 ? base[j] : static_cast<float>(base[j] + sum[j] / count[j]);
	}

private:
	MethodInfo info_{
	    .name = "localize_stitch",
	    .description = "Localize-and-Stitch: top-|delta| masks per task (dataless), or masks learned on a few "
	                   "labeled examples of each task (mode: learned), averaged where they overlap",
	    .reference = "https://arxiv.org/abs/2408.13656",
	    .global_params =
	        {{.name = "mode",
	          .type = ParamType::Text,
	          .has_default = false,
	          .help = "dataless (the default) or learned (needs each model's data: file; runs in the "
	                  "model runtime)"},
	         {.name = "steps", .default_value = 20, .help = "learned: Adam steps per task", .min_value = 0},
	         {.name = "lr",
	          .default_value = 0.1,
	          .help = "learned: Adam learning rate of the mask logits",
	          .min_value = 0,
	          .min_exclusive = true},
	         {.name = "l1", .default_value = 1, .help = "learned: weight of the mean mask value", .min_value = 0},
	         {.name = "sigmoid_bias",
	          .default_value = 3,
	          .help = "learned: initial mask logits, + on the top density of |delta| and - elsewhere",
	          .min_value = 0}},
	    .model_params = {{.name = "density",
	                      .default_value = 0.01,
	                      .help = "Fraction of this model's delta elements (largest |delta|) stitched in (learned: "
	                              "where its mask starts)",
	                      .min_value = 0,
	                      .max_value = 1,
	                      .min_exclusive = true},
	                     {.name = "data",
	                      .type = ParamType::Text,
	                      .has_default = false,
	                      .help = "learned: a few labeled examples of this model's task (prompt/answer JSONL)"}},
	    .base = BaseModel::Required,
	    .min_sources = 2,
	    .learned_when = {"mode", "learned"},
	};
};

} // namespace

const MergeMethod& localize_stitch_method() {
	static const LocalizeStitchMethod method;
	return method;
}

} // namespace weld
