// Passthrough: copies one model's tensor, optionally scaled (used for layer stacking).
#include "methods/methods.h"

#include <algorithm>

namespace weld {
namespace {

class PassthroughMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const std::span<const float> x = input.sources[0];
		const std::optional<double> scale = source_param(info_, input, 0, "scale");
		if (!scale) {
			std::copy(x.begin(), x.end(), out.begin());
			return;
		}
		// Multiply in float32 like torch's tensor * python-float.
		const auto factor = static_cast<float>(*scale);
		for (size_t j = 0; j < out.size(); ++j)
			out[j] = x[j] * factor;
	}

private:
	MethodInfo info_{
	    .name = "passthrough",
	    .description = "Copies the single source model's tensor, optionally scaled",
	    .reference = "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md#passthrough-passthrough",
	    .global_params = {},
	    .model_params = {{.name = "scale", .has_default = false, .help = "Multiply the tensor by this factor"}},
	    .base = BaseModel::Ignored,
	    .min_sources = 1,
	    .max_sources = 1,
	    .copy_only = true,
	};
};

} // namespace

const MergeMethod& passthrough_method() {
	static const PassthroughMethod method;
	return method;
}

} // namespace weld
