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

void RuntimeMethod::merge(const MergeInput& input, std::span<float>) const {
	throw Error(fmt::format("tensor '{}': {} runs in the model runtime; run it with `weld merge` (built with libtorch)",
	                        input.tensor_name, info_.name));
}

ParamDef unlabeled_prompts_param() {
	return {.name = "data",
	        .type = ParamType::Text,
	        .required = true,
	        .has_default = false,
	        .help = "Unlabeled prompts: prompt/answer JSONL (answers ignored) or text lines"};
}

std::vector<ParamDef> statistics_source_params(const std::string& stats_help, std::vector<ParamDef> before) {
	before.push_back({.name = "data",
	                  .type = ParamType::Text,
	                  .has_default = false,
	                  .help = "Or a data file: weld merge computes the statistics on it (cached beside the output)"});
	before.push_back({.name = "stats", .type = ParamType::Text, .has_default = false, .help = stats_help});
	return before;
}

void check_source_count(const MethodInfo& info, const MergeInput& input, size_t count) {
	if (count == 0) throw Error(fmt::format("tensor '{}': {} merge got no sources", input.tensor_name, info.name));
	if (count < info.min_sources || (info.max_sources != 0 && count > info.max_sources)) {
		std::string want = info.min_sources == info.max_sources ? fmt::format("{}", info.min_sources)
		                   : info.max_sources == 0              ? fmt::format("at least {}", info.min_sources)
		                                           : fmt::format("{} to {}", info.min_sources, info.max_sources);
		throw Error(
		    fmt::format("tensor '{}': {} merge needs {} source(s), got {}", input.tensor_name, info.name, want, count));
	}
	if (info.base == BaseModel::Required && (input.base_index < 0 || static_cast<size_t>(input.base_index) >= count))
		throw Error(fmt::format("tensor '{}': {} merge needs a base model among its {} source(s) (base index {})",
		                        input.tensor_name, info.name, count, input.base_index));
}

void check_merge_input(const MethodInfo& info, const MergeInput& input, std::span<const float> out) {
	check_source_count(info, input, input.sources.size());
	for (size_t i = 0; i < input.sources.size(); ++i)
		if (input.sources[i].size() != out.size())
			throw Error(fmt::format("tensor '{}': source {} has {} elements, expected {}", input.tensor_name, i,
			                        input.sources[i].size(), out.size()));
}

void merge_in_blocks(BlockMerge& kernel, const MergeInput& input, std::span<float> out) {
	const uint64_t n = out.size();
	std::vector<std::span<const float>> views(input.sources.size());
	auto block_at = [&](uint64_t index) {
		const uint64_t offset = index * kBlockElements, size = std::min(kBlockElements, n - offset);
		for (size_t s = 0; s < views.size(); ++s)
			views[s] = input.sources[s].subspan(offset, size);
		return Block{.index = index, .offset = offset, .sources = views};
	};
	for (int pass = 0; pass < kernel.stat_passes(); ++pass) {
		if (!kernel.wants_pass(pass)) continue;
		for (uint64_t b = 0; b < block_count(n); ++b)
			kernel.observe(pass, block_at(b), 0);
		kernel.end_pass(pass);
	}
	for (uint64_t b = 0; b < block_count(n); ++b) {
		const Block block = block_at(b);
		kernel.merge(block, out.subspan(block.offset, block.size()), 0);
	}
	if (input.notes)
		for (auto& note : kernel.notes())
			input.notes->push_back(std::move(note));
}

std::vector<size_t> model_indices(const MergeInput& input, size_t source_count) {
	std::vector<size_t> models;
	for (size_t i = 0; i < source_count; ++i)
		if (static_cast<int>(i) != input.base_index) models.push_back(i);
	return models;
}

std::vector<size_t> model_indices(const MergeInput& input) {
	return model_indices(input, input.sources.size());
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
