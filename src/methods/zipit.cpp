// ZipIt's entry in the method table (mergekit's activation-based merge, from its wip-zipit
// branch): its parameters, for recipes and `weld methods`. Every model after the first has its
// hidden units matched to the first's by activation correlations on `data` and permuted (the same
// function), then the models are averaged; the runtime does it (src/learned/zipit.cpp).
#include "methods/methods.h"

namespace weld {

const MergeMethod& zipit_method() {
	static const RuntimeMethod method(MethodInfo{
	    .name = "zipit",
	    .description = "Models trained apart (no shared base): the hidden units of each model matched to the "
	                   "first's by activation correlation on data, permuted, then averaged",
	    .reference = "https://github.com/gstoica27/ZipIt",
	    .global_params = {{.name = "data",
	                       .type = ParamType::Text,
	                       .required = true,
	                       .has_default = false,
	                       .help = "Data the activations are taken on: prompt/answer JSONL, text lines or token ids"},
	                      {.name = "absval",
	                       .type = ParamType::Bool,
	                       .default_value = 0,
	                       .help = "Match units by the absolute value of their correlation (mergekit's --absval)"},
	                      {.name = "samples",
	                       .default_value = 256,
	                       .help = "Sequences of data to take the activations on",
	                       .min_value = 1}},
	    .model_params = {{.name = "weight", .default_value = 1, .help = "Weight of this model in the average"}},
	    .base = BaseModel::Ignored,
	    .learned = true,
	});
	return method;
}

} // namespace weld
