#include "exec/describe.h"

#include "io/model.h"
#include "plan/tensor_merge.h"
#include "util/error.h"

#include <algorithm>
#include <filesystem>

namespace weld {

nlohmann::ordered_json describe_model(const std::string& reference) {
	const auto dir = resolve_model_reference(reference);
	const ModelFolder model(dir);
	uint64_t params = 0, bytes = 0;
	for (const auto& t : model.tensors()) {
		params += t.info->numel();
		bytes += t.info->nbytes();
	}
	const auto& config = model.config();
	nlohmann::ordered_json out;
	out["path"] = dir.string();
	out["architecture"] = config ? config->architecture : "";
	if (config && config->num_hidden_layers) out["num_hidden_layers"] = *config->num_hidden_layers;
	if (config && config->vocab_size) out["vocab_size"] = *config->vocab_size;
	out["parameters"] = params;
	out["bytes"] = bytes;
	auto& tensors = out["tensors"] = nlohmann::ordered_json::array();
	for (const auto& t : model.tensors())
		tensors.push_back({{"name", t.info->name},
		                   {"dtype", dtype_safetensors_name(t.info->dtype)},
		                   {"shape", t.info->shape},
		                   {"shard", t.file->path().filename().string()}});
	return out;
}

AdapterComparison compare_adapters(const std::vector<std::string>& paths) {
	AdapterComparison c;
	for (const auto& path : paths)
		c.adapters.push_back(read_peft_adapter(path));
	c.overlaps = lora::adapter_overlaps(c.adapters);
	for (size_t i = 0; i < c.overlaps.size(); i++) {
		const auto& o = c.overlaps[i].value;
		if (o.rank1 == 0 || o.rank2 == 0) continue; // a zero update overlaps nothing
		++c.pairs;
		c.mean_overlap += o.overlap;
		c.mean_max_cosine += o.max_cosine;
		if (!c.most || o.overlap > c.overlaps[*c.most].value.overlap) c.most = i;
	}
	if (c.pairs) {
		c.mean_overlap /= static_cast<double>(c.pairs);
		c.mean_max_cosine /= static_cast<double>(c.pairs);
	}
	return c;
}

nlohmann::ordered_json describe_adapters(const AdapterComparison& c) {
	nlohmann::ordered_json out;
	auto& list = out["adapters"] = nlohmann::ordered_json::array();
	for (const auto& a : c.adapters)
		list.push_back({{"path", a.dir.string()}, {"r", a.config.r}, {"modules", a.modules.size()}});
	auto& pairs = out["overlaps"] = nlohmann::ordered_json::array();
	for (const auto& o : c.overlaps)
		pairs.push_back({{"module", o.module},
		                 {"adapters", {o.first, o.second}},
		                 {"ranks", {o.value.rank1, o.value.rank2}},
		                 {"overlap", o.value.overlap},
		                 {"max_cosine", o.value.max_cosine}});
	out["summary"] = {{"pairs", c.pairs}, {"mean_overlap", c.mean_overlap}, {"mean_max_cosine", c.mean_max_cosine}};
	return out;
}

bool inspects_adapters(const std::vector<std::string>& paths) {
	const auto is_adapter = [](const std::string& path) {
		return std::filesystem::exists(std::filesystem::path(path) / "adapter_config.json");
	};
	if (!paths.empty() && std::all_of(paths.begin(), paths.end(), is_adapter)) return true;
	if (paths.size() == 1) return false;
	throw Error("inspect takes one model folder, or adapter folders (with adapter_config.json) to compare");
}

nlohmann::ordered_json describe_inspected(const std::vector<std::string>& paths) {
	return inspects_adapters(paths) ? describe_adapters(compare_adapters(paths)) : describe_model(paths.front());
}

namespace {

const char* type_name(ParamType type) {
	switch (type) {
	case ParamType::Bool:
		return "bool";
	case ParamType::Text:
		return "text";
	case ParamType::Number:
		break;
	}
	return "number";
}

const char* base_name(BaseModel base) {
	switch (base) {
	case BaseModel::Required:
		return "required";
	case BaseModel::Optional:
		return "optional";
	case BaseModel::Ignored:
		break;
	}
	return "ignored";
}

nlohmann::ordered_json describe_param(const ParamDef& def) {
	nlohmann::ordered_json out;
	out["type"] = type_name(def.type);
	out["required"] = def.required;
	if (!def.required && def.has_default && def.type != ParamType::Text) {
		if (def.type == ParamType::Bool)
			out["default"] = def.default_value != 0;
		else
			out["default"] = def.default_value;
	}
	if (def.type == ParamType::Number && def.min_value > -1e300) {
		out["min"] = def.min_value;
		out["min_exclusive"] = def.min_exclusive;
	}
	if (def.type == ParamType::Number && def.max_value < 1e300) out["max"] = def.max_value;
	out["help"] = def.help;
	return out;
}

nlohmann::ordered_json describe_params(const std::vector<ParamDef>& defs) {
	auto out = nlohmann::ordered_json::object();
	for (const auto& def : defs)
		out[def.name] = describe_param(def);
	return out;
}

} // namespace

nlohmann::ordered_json describe_method(const MethodInfo& info) {
	nlohmann::ordered_json out;
	out["description"] = info.description;
	out["reference"] = info.reference;
	out["base_model"] = base_name(info.base);
	out["global"] = describe_params(info.global_params);
	out["per_model"] = describe_params(info.model_params);
	out["min_sources"] = info.min_sources;
	if (info.max_sources) out["max_sources"] = info.max_sources;
	out["statistics"] = info.statistics;
	out["learned"] = info.learned;
	out["data_free"] = is_data_free(info);
	return out;
}

nlohmann::ordered_json describe_methods() {
	nlohmann::ordered_json out = nlohmann::ordered_json::object();
	for (const auto* method : all_methods())
		out[method->info().name] = describe_method(method->info());
	return out;
}

} // namespace weld
