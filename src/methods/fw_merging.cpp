// FW-Merging's entry in the method table: its parameters, for recipes and `weld methods`. The
// Frank–Wolfe steps run in the model runtime (src/learned/fw_merging.cpp), which then merges
// with task_arithmetic; `weld merge` hands fw_merging recipes to weld-torch for that.
#include "methods/methods.h"
#include "util/error.h"

#include <fmt/format.h>

namespace weld {
namespace {

class FwMergingMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float>) const override {
		throw Error(fmt::format("tensor '{}': fw_merging runs Frank-Wolfe steps with the model runtime first; run it "
		                        "with `weld merge` (built with libtorch)",
		                        input.tensor_name));
	}

private:
	MethodInfo info_{
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
	                       .help = "hard (Frank-Wolfe on the pool's convex hull, the default) or soft (task "
	                               "arithmetic start, scaled steps along the best-aligned task vector)"},
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
	};
};

} // namespace

const MergeMethod& fw_merging_method() {
	static const FwMergingMethod method;
	return method;
}

} // namespace weld
