// DAM's entry in the method table: its parameters, for recipes and `weld methods`. The masks are
// learned by the model runtime (src/learned/dam.cpp); `weld merge` hands dam recipes to
// weld-torch, which writes the merged model.
#include "methods/methods.h"

namespace weld {

const MergeMethod& dam_method() {
	static const RuntimeMethod method(MethodInfo{
	    .name = "dam",
	    .description = "Defense-Aware Merging: task arithmetic through a task-shared Concrete mask and a "
	                   "backdoor-detection mask that takes off the task vectors where a small clean labeled set "
	                   "does not need them, learned in turn",
	    .reference = "https://arxiv.org/abs/2410.13910",
	    .global_params =
	        {{.name = "data",
	          .type = ParamType::Text,
	          .has_default = false,
	          .help = "A small clean labeled set: prompt/answer JSONL (required unless masks is given)"},
	         {.name = "masks",
	          .type = ParamType::Text,
	          .has_default = false,
	          .help = "The dam_masks.pt of an earlier dam merge: merge with its masks, without data (the output's "
	                  "weld_recipe.yml does)"},
	         {.name = "lambda", .default_value = 0.3, .help = "Task arithmetic's λ"},
	         {.name = "temperature",
	          .default_value = 0.5,
	          .help = "Temperature of both relaxed Bernoulli masks",
	          .min_value = 0,
	          .min_exclusive = true},
	         {.name = "steps", .default_value = 100, .help = "Steps, each one Adam step on each mask", .min_value = 0},
	         {.name = "lr",
	          .default_value = 1e-2,
	          .help = "Adam learning rate of the task-shared mask's logits",
	          .min_value = 0,
	          .min_exclusive = true},
	         {.name = "backdoor_lr",
	          .default_value = 0.1,
	          .help = "Adam learning rate of the backdoor-detection mask's logits",
	          .min_value = 0,
	          .min_exclusive = true},
	         {.name = "batch", .default_value = 16, .help = "Clean examples per step", .min_value = 1},
	         {.name = "alpha",
	          .default_value = 1,
	          .help = "Weight of the backdoor mask's removal reward α · mean(b) against the clean cross-entropy",
	          .min_value = 0},
	         {.name = "backdoor_init", .default_value = -3, .help = "Initial logit of the backdoor-detection mask"},
	         {.name = "final_mask",
	          .type = ParamType::Text,
	          .has_default = false,
	          .help = "median (the noise-free masks σ(x/T), the default) or sample (one more draw of each)"}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .learned = true,
	});
	return method;
}

} // namespace weld
