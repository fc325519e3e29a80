#include "methods/methods.h"
#include "util/error.h"

#include <algorithm>
#include <cassert>
#include <fmt/format.h>

namespace weld {
namespace {

const ParamDef& find_def(const std::vector<ParamDef>& defs, std::string_view name) {
	auto it = std::find_if(defs.begin(), defs.end(), [&](const ParamDef& d) { return d.name == name; });
	assert(it != defs.end() && "method asked for a parameter it does not declare");
	return *it;
}

} // namespace

void check_merge_input(const MethodInfo& info, const MergeInput& input, std::span<const float> out) {
	const size_t count = input.sources.size();
	if (count == 0) throw Error(fmt::format("tensor '{}': {} merge got no sources", input.tensor_name, info.name));
	if (count < info.min_sources || (info.max_sources != 0 && count > info.max_sources)) {
		std::string want = info.min_sources == info.max_sources ? fmt::format("{}", info.min_sources)
		                   : info.max_sources == 0              ? fmt::format("at least {}", info.min_sources)
		                                           : fmt::format("{} to {}", info.min_sources, info.max_sources);
		throw Error(
		    fmt::format("tensor '{}': {} merge needs {} source(s), got {}", input.tensor_name, info.name, want, count));
	}
	for (size_t i = 0; i < count; ++i)
		if (input.sources[i].size() != out.size())
			throw Error(fmt::format("tensor '{}': source {} has {} elements, expected {}", input.tensor_name, i,
			                        input.sources[i].size(), out.size()));
	if (info.base == BaseModel::Required && (input.base_index < 0 || static_cast<size_t>(input.base_index) >= count))
		throw Error(fmt::format("tensor '{}': {} merge needs a base model among its {} source(s) (base index {})",
		                        input.tensor_name, info.name, count, input.base_index));
}

std::vector<size_t> model_indices(const MergeInput& input) {
	std::vector<size_t> models;
	for (size_t i = 0; i < input.sources.size(); ++i)
		if (static_cast<int>(i) != input.base_index) models.push_back(i);
	return models;
}

double global_param(const MethodInfo& info, const MergeInput& input, std::string_view name) {
	if (auto it = input.params.find(name); it != input.params.end()) return it->second;
	const ParamDef& def = find_def(info.global_params, name);
	if (def.required)
		throw Error(fmt::format("tensor '{}': {} merge needs parameter '{}'", input.tensor_name, info.name, name));
	return def.default_value;
}

std::optional<double> source_param(const MethodInfo& info, const MergeInput& input, size_t source,
                                   std::string_view name) {
	if (source < input.source_params.size()) {
		const ParamValues& values = input.source_params[source];
		if (auto it = values.find(name); it != values.end()) return it->second;
	}
	const ParamDef& def = find_def(info.model_params, name);
	if (def.required)
		throw Error(fmt::format("tensor '{}': {} merge needs parameter '{}' for source {}", input.tensor_name,
		                        info.name, name, source));
	if (!def.has_default) return std::nullopt;
	return def.default_value;
}

} // namespace weld
