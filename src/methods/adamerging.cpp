// AdaMerging's entry in the method table: its parameters, for recipes and `weld methods`. The
// coefficients are learned by the runtime (src/learned/adamerging.cpp), which then merges with
// task_arithmetic; `weld merge` hands adamerging recipes to weld-torch for that.
#include "methods/methods.h"

namespace weld {

const MergeMethod& adamerging_method() {
	static const RuntimeMethod method(MethodInfo{
	    .name = "adamerging",
	    .description = "Task arithmetic with a λ per task or per task and tensor, learned by minimizing the entropy "
	                   "of the merged model's answers to unlabeled prompts",
	    .reference = "https://arxiv.org/abs/2310.02575",
	    .global_params =
	        {unlabeled_prompts_param(),
	         {.name = "granularity",
	          .type = ParamType::Text,
	          .has_default = false,
	          .help = "layer (a λ per task and tensor, the default) or task (a λ per task)"},
	         {.name = "steps", .default_value = 100, .help = "Adam steps", .min_value = 0},
	         {.name = "lr", .default_value = 1e-3, .help = "Adam learning rate", .min_value = 0, .min_exclusive = true},
	         {.name = "lambda_init", .default_value = 0.3, .help = "Initial λ of every task"},
	         {.name = "batch", .default_value = 16, .help = "Prompts per step", .min_value = 1}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .learned = true,
	});
	return method;
}

} // namespace weld
