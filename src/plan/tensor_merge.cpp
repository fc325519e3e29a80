#include "plan/tensor_merge.h"

#include "methods/method.h"
#include "plan/plan.h"
#include "tensor/convert.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace weld {
namespace {

constexpr const char* kWhere = "merge_tensors";

const ParamDef* find_param(const std::vector<ParamDef>& defs, std::string_view name) {
	const auto it = std::find_if(defs.begin(), defs.end(), [&](const ParamDef& d) { return d.name == name; });
	return it == defs.end() ? nullptr : &*it;
}

std::string param_names(const MethodInfo& info) {
	std::vector<std::string> names;
	for (const auto* defs : {&info.global_params, &info.model_params})
		for (const auto& def : *defs)
			if (def.type != ParamType::Text) names.push_back(def.name);
	return names.empty() ? "none" : fmt::format("{}", fmt::join(names, ", "));
}

void check_request(const MethodInfo& info, const TensorMergeRequest& request) {
	if (!is_data_free(info))
		throw Error(fmt::format("{}: method '{}' learns from data or statistics of data; only data-free methods "
		                        "merge tensors alone (use weld merge with a recipe)",
		                        kWhere, info.name));
	if (info.base == BaseModel::Required && !request.base)
		throw Error(fmt::format("{}: method '{}' needs a base tensor", kWhere, info.name));
	if (info.base == BaseModel::Ignored && request.base)
		throw Error(fmt::format("{}: method '{}' takes no base (a recipe's base_model is ignored); pass base=None and "
		                        "list it among the tensors",
		                        kWhere, info.name));
	for (const auto& [name, argument] : request.params) {
		const auto* global = find_param(info.global_params, name);
		const auto* def = global ? global : find_param(info.model_params, name);
		if (!def)
			throw Error(fmt::format("{}: method '{}' has no parameter '{}' (parameters: {})", kWhere, info.name, name,
			                        param_names(info)));
		if (def->type == ParamType::Text)
			throw Error(fmt::format("{}: parameter '{}' of method '{}' is text, read from a recipe; merge_tensors "
			                        "takes numbers and booleans only",
			                        kWhere, name, info.name));
		if (global && argument.per_model)
			throw Error(fmt::format("{}: parameter '{}' of method '{}' is global: one value, not one per model", kWhere,
			                        name, info.name));
		if (argument.per_model && argument.values.size() != request.models.size())
			throw Error(fmt::format("{}: parameter '{}' has {} values for {} tensors", kWhere, name,
			                        argument.values.size(), request.models.size()));
		for (const auto& value : argument.values)
			check_param_value(*def, value, request.tensor_name, kWhere);
	}
}

ParamValues global_values(const MethodInfo& info, const TensorMergeRequest& request) {
	ParamValues values;
	for (const auto& def : info.global_params) {
		if (def.type == ParamType::Text) continue;
		if (const auto it = request.params.find(def.name); it != request.params.end())
			values[def.name] = it->second.values.front().number;
		else if (def.required)
			throw Error(fmt::format("{}: method '{}' needs parameter '{}'", kWhere, info.name, def.name));
		else if (def.has_default)
			values[def.name] = def.default_value;
	}
	return values;
}

// Per model (source < models.size()) or for the base (source == models.size()), as the plan
// resolves them: the base may lack required parameters and takes only values set for all.
ParamValues source_values(const MethodInfo& info, const TensorMergeRequest& request, size_t source) {
	const bool is_base = source == request.models.size();
	ParamValues values;
	for (const auto& def : info.model_params) {
		if (def.type == ParamType::Text) continue;
		const auto it = request.params.find(def.name);
		if (it != request.params.end() && !(is_base && it->second.per_model))
			values[def.name] = it->second.values[it->second.per_model ? source : 0].number;
		else if (def.required && !is_base)
			throw Error(fmt::format("{}: method '{}' needs parameter '{}' for tensors[{}]", kWhere, info.name, def.name,
			                        source));
		else if (def.has_default && !def.required)
			values[def.name] = def.default_value;
	}
	// A method's model order (cabs' pruning_order): the order the tensors are given in.
	if (!info.model_order.empty()) values[info.model_order] = static_cast<double>(source);
	return values;
}

// As weld merge refuses them (exec/executor.cpp): NaN and ±Inf spread through every method.
void check_finite(const TensorMergeRequest& request) {
	for (size_t s = 0; s <= request.models.size(); s++) {
		const bool is_base = s == request.models.size();
		if (is_base && !request.base) break;
		const auto values = is_base ? *request.base : request.models[s];
		const size_t at = first_nonfinite(values.data(), values.size());
		if (at < values.size())
			throw Error(fmt::format("{}: {}: element {} is {} (allow_nonfinite=True merges it anyway)", kWhere,
			                        is_base ? std::string("base") : fmt::format("tensors[{}]", s), at,
			                        nonfinite_name(values[at])));
	}
}

} // namespace

bool is_data_free(const MethodInfo& info) {
	return info.statistics.empty() && !info.learned;
}

void merge_tensor(const TensorMergeRequest& request, std::span<float> out) {
	const auto* method = find_method(request.method);
	if (!method) throw Error(fmt::format("{}: unknown method '{}' (see weld.methods())", kWhere, request.method));
	const auto& info = method->info();
	check_request(info, request);

	MergeInput input;
	input.tensor_name = request.tensor_name;
	input.shape = request.shape;
	input.sources = request.models;
	if (request.base) {
		input.base_index = static_cast<int>(input.sources.size());
		input.sources.push_back(*request.base);
	}
	input.params = global_values(info, request);
	for (size_t s = 0; s < input.sources.size(); s++)
		input.source_params.push_back(source_values(info, request, s));
	input.random_seed = request.seed;
	uint64_t numel = 1;
	for (const auto d : request.shape)
		numel *= d;
	for (const auto& source : input.sources)
		if (source.size() != numel)
			throw Error(fmt::format("{}: a tensor has {} elements where the shape [{}] has {}", kWhere, source.size(),
			                        fmt::join(request.shape, ", "), numel));
	if (out.size() != numel)
		throw Error(fmt::format("{}: the output has {} elements where the shape has {}", kWhere, out.size(), numel));
	if (!request.allow_nonfinite) check_finite(request);
	method->merge(input, out);
}

} // namespace weld
