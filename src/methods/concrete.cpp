// Concrete's entry in the method table: its parameters, for recipes and `weld methods`. The mask
// is learned by the model runtime (src/learned/concrete.cpp); `weld merge` hands concrete recipes
// to weld-torch, which writes the merged model.
#include "methods/methods.h"

namespace weld {

const MergeMethod& concrete_method() {
	static const RuntimeMethod method(MethodInfo{
	    .name = "concrete",
	    .description = "Task arithmetic through one Concrete (relaxed Bernoulli) mask shared by the tasks, learned by "
	                   "minimizing the entropy of the merged model's answers to unlabeled prompts",
	    .reference = "https://github.com/tanganke/subspace_fusion",
	    .global_params =
	        {unlabeled_prompts_param(),
	         {.name = "variant",
	          .type = ParamType::Text,
	          .has_default = false,
	          .help = "task_arithmetic (λ fixed, the default) or adamerging (then layer-wise λ learned over the "
	                  "masked task vectors)"},
	         {.name = "lambda", .default_value = 0.3, .help = "Task arithmetic's λ (adamerging: the initial λ)"},
	         {.name = "temperature",
	          .default_value = 0.5,
	          .help = "Temperature of the relaxed Bernoulli mask",
	          .min_value = 0,
	          .min_exclusive = true},
	         {.name = "steps", .default_value = 100, .help = "Adam steps on the mask logits", .min_value = 0},
	         {.name = "lr",
	          .default_value = 1e-2,
	          .help = "Adam learning rate of the mask logits",
	          .min_value = 0,
	          .min_exclusive = true},
	         {.name = "batch", .default_value = 16, .help = "Prompts per step", .min_value = 1}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .learned = true,
	});
	return method;
}

} // namespace weld
