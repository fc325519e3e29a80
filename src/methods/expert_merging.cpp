// Expert Merging's entry in the method table: its parameters, for recipes and `weld methods`. The
// coefficients are learned by the model runtime (src/learned/expert_merging.cpp); `weld merge`
// hands expert_merging recipes to weld-torch.
#include "methods/methods.h"

namespace weld {

const MergeMethod& expert_merging_method() {
	static const RuntimeMethod method(MethodInfo{
	    .name = "expert_merging",
	    .description = "Task arithmetic with a coefficient per task and tensor (or tensor chunk: variant plus) "
	                   "learned so that the merged model's logits and hidden states match each expert's on its "
	                   "unlabeled prompts",
	    .reference = "https://github.com/Littleor/ExpertMerging",
	    .global_params =
	        {{.name = "variant",
	          .type = ParamType::Text,
	          .has_default = false,
	          .help = "standard (one coefficient per task and tensor, the default) or plus (Expert Merging++: then "
	                  "chunks by importance)"},
	         {.name = "lambda_init",
	          .default_value = 0.1,
	          .help = "Initial coefficient",
	          .min_value = 0,
	          .max_value = 1,
	          .min_exclusive = true},
	         {.name = "steps", .default_value = 50, .help = "Adam steps", .min_value = 0},
	         {.name = "lr",
	          .default_value = 0.1,
	          .help = "Adam learning rate of the coefficient logits",
	          .min_value = 0,
	          .min_exclusive = true},
	         {.name = "batch", .default_value = 16, .help = "Calibration samples per step", .min_value = 1},
	         {.name = "temperature",
	          .default_value = 1,
	          .help = "Of the soft-target cross-entropy",
	          .min_value = 0,
	          .min_exclusive = true},
	         {.name = "hidden_weight", .default_value = 1, .help = "Weight of the hidden-state MSE", .min_value = 0},
	         {.name = "regularization", .default_value = 5, .help = "Weight of mean |α − lambda_init|", .min_value = 0},
	         {.name = "chunks", .default_value = 4, .help = "plus: mean chunks per tensor", .min_value = 1}},
	    .model_params = {{.name = "data",
	                      .type = ParamType::Text,
	                      .has_default = false,
	                      .help = "Unlabeled calibration prompts of this model's task (prompt/answer JSONL, answers "
	                              "ignored, or text lines)"}},
	    .base = BaseModel::Required,
	    .learned = true,
	});
	return method;
}

} // namespace weld
