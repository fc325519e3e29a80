// FW-Merging's entry in the method table: its parameters, for recipes and `weld methods`. The
// Frank–Wolfe steps run in the model runtime (src/learned/fw_merging.cpp), which then merges
// with task_arithmetic; `weld merge` hands fw_merging recipes to weld-torch for that.
#include "methods/methods.h"

namespace weld {

const MergeMethod& fw_merging_method() {
	static const RuntimeMethod method(MethodInfo{
	    .name = "fw_merging",
	    .description = "Frank-Wolfe over a pool of models: each step moves every tensor toward the model that most "
	                   "lowers the loss on labeled proxy data",
	    .reference = "https://arxiv.org/abs/2503.12649",
	    .global_params = {{.name = "data",
	                       .type = ParamType::Text,
	                       .required = true,
	                       .has_default = false,
	                       .help = "Labeled proxy data of the target tasks: prompt/answer JSONL (loss on the answer)"},
	                      {.name = "variant",
	                       .type = ParamType::Text,
	                       .has_default = false,
	                       .help = "hard (Frank-Wolfe on the hull of the base and the scaled models, the "
	                               "default) or soft (then AdaMerging over the models the steps chose)"},
	                      {.name = "steps", .default_value = 10, .help = "Frank-Wolfe steps", .min_value = 0},
	                      {.name = "step_size",
	                       .default_value = 1,
	                       .help = "Scales the step 2/(t+2)",
	                       .min_value = 0,
	                       .min_exclusive = true},
	                      {.name = "scaling",
	                       .default_value = 1,
	                       .help = "Vertices are base + scaling × each task vector"}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .learned = true,
	});
	return method;
}

} // namespace weld
