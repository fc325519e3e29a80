// Twin-Merging's entry in the method table: its parameters, for recipes and `weld methods`. The
// runtime (src/learned/twin.cpp) builds the folder: the shared model, each expert's exclusive
// part as a truncated SVD, and a router trained on the models' data; `weld eval` runs it
// (src/nn/twin.h), mixing the exclusive parts per input.
#include "methods/methods.h"

namespace weld {

const MergeMethod& twin_method() {
	static const RuntimeMethod method(MethodInfo{
	    .name = "twin",
	    .description = "Twin-Merging: a shared task-arithmetic model plus each expert's exclusive part (truncated "
	                   "SVD), mixed per input by a router trained on the models' data; weld eval runs the folder",
	    .reference = "https://github.com/LZY-the-boys/Twin-Merging",
	    .global_params =
	        {{.name = "lambda", .default_value = 0.3, .help = "Shared part: λ Σ τ_i"},
	         {.name = "density",
	          .default_value = 0.1,
	          .help = "Rank kept of each exclusive part: floor(density · min(rows, cols)), at least 1",
	          .min_value = 0,
	          .max_value = 1,
	          .min_exclusive = true},
	         {.name = "router_lr",
	          .default_value = 5e-4,
	          .help = "AdamW learning rate of the router",
	          .min_value = 0,
	          .min_exclusive = true},
	         {.name = "router_epochs", .default_value = 50, .help = "Router training epochs", .min_value = 1}},
	    .model_params = {{.name = "data",
	                      .type = ParamType::Text,
	                      .has_default = false,
	                      .help = "Prompts of this model's task (prompt/answer JSONL): the router learns to send them "
	                              "to this model"}},
	    .base = BaseModel::Required,
	    .learned = true,
	});
	return method;
}

} // namespace weld
