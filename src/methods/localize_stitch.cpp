// Localize-and-Stitch, dataless variant (He et al. 2024): each task keeps only its largest
// changes (mask gamma_i = top `density` of |tau_i|), and the masked task vectors are stitched
// into the base, averaged where masks overlap:
//   theta = theta_0 + sum_i (gamma_i / sum_j gamma_j) * tau_i   (nothing added where no mask is set)
#include "methods/methods.h"
#include "tensor/kernels.h"

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

class LocalizeStitchMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		const size_t d = out.size();
		std::vector<double> sum(d, 0.0);
		std::vector<uint32_t> count(d, 0);
		std::vector<float> localized(d);
		for (size_t i = 0; i < input.sources.size(); ++i) {
			if (static_cast<int>(i) == input.base_index) continue;
			// Localize: the top floor(density * d) entries by |tau| (none for a tiny tensor).
			const double density = *source_param(info_, input, i, "density");
			const double kept = std::floor(std::clamp(density, 0.0, 1.0) * static_cast<double>(d));
			const auto k = static_cast<size_t>(kept);
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
