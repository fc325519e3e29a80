// RegMean++'s entry in the method table: its parameters, for recipes and `weld methods`. The
// Grams are taken through the merged model as it is built (src/learned/regmean_pp.cpp), so it
// runs in the model runtime; `weld merge` hands regmean_pp recipes to weld-torch.
#include "methods/methods.h"

namespace weld {

const MergeMethod& regmean_pp_method() {
	static const RuntimeMethod method(MethodInfo{
	    .name = "regmean_pp",
	    .description = "RegMean with each layer's Grams taken on each task's data through the already-merged earlier "
	                   "layers, layer by layer",
	    .reference = "https://arxiv.org/abs/2508.03121",
	    .global_params = {{.name = "alpha",
	                       .default_value = 0.9,
	                       .help = "Scale of the Gram matrices' off-diagonal entries",
	                       .min_value = 0,
	                       .max_value = 1}},
	    .model_params = {{.name = "data",
	                      .type = ParamType::Text,
	                      .required = true,
	                      .has_default = false,
	                      .help = "This model's task data: prompt/answer or token-id JSONL, or text lines"}},
	    .base = BaseModel::Ignored,
	    .learned = true,
	});
	return method;
}

} // namespace weld
