#include "io/peft.h"

#include "io/output_folder.h"
#include "tensor/convert.h"
#include "util/error.h"

#include <fmt/format.h>

#include <cassert>
#include <cmath>
#include <fstream>
#include <map>
#include <regex>

namespace weld {
namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

constexpr std::string_view kPrefix = "base_model.model.";

// Python's re patterns, as PEFT applies them; the simple patterns adapters use mean the same in
// ECMAScript.
std::regex compile(const std::string& pattern, const std::string& label, std::string_view field) {
	try {
		return std::regex(pattern, std::regex::ECMAScript);
	} catch (const std::regex_error& e) {
		throw Error(fmt::format("{}: '{}': {} is not a valid regular expression: {}", show(label), field,
		                        quote_for_message(pattern), e.what()));
	}
}

bool matches(const std::string& pattern, std::string_view text) {
	return std::regex_match(text.begin(), text.end(), std::regex(pattern, std::regex::ECMAScript));
}

// PEFT's get_pattern_key: the first key k with module matching (.*\.)?(k)$.
template <class T>
const T* pattern_value(const std::vector<std::pair<std::string, T>>& patterns, std::string_view module) {
	for (const auto& [key, value] : patterns)
		if (matches("(.*\\.)?(" + key + ")", module)) return &value;
	return nullptr;
}

[[noreturn]] void bad_field(const std::string& label, std::string_view field, std::string_view what,
                            const ordered_json& value) {
	throw Error(
	    fmt::format("{}: '{}' must be {}, got {}", show(label), field, what, escape_for_message(value.dump(), 60)));
}

const ordered_json* field(const ordered_json& j, const char* key) {
	auto it = j.find(key);
	return it == j.end() || it->is_null() ? nullptr : &*it;
}

int64_t positive_int(const ordered_json& value, const std::string& label, std::string_view name) {
	if (!value.is_number_integer() || value.get<int64_t>() <= 0) bad_field(label, name, "a positive integer", value);
	return value.get<int64_t>();
}

double finite_number(const ordered_json& value, const std::string& label, std::string_view name) {
	if (!value.is_number() || !std::isfinite(value.get<double>())) bad_field(label, name, "a number", value);
	return value.get<double>();
}

bool boolean(const ordered_json& j, const char* key, const std::string& label) {
	const auto* value = field(j, key);
	if (!value) return false;
	if (!value->is_boolean()) bad_field(label, key, "true or false", *value);
	return value->get<bool>();
}

std::string text(const ordered_json& j, const char* key, const std::string& label) {
	const auto* value = field(j, key);
	if (!value) return "";
	if (!value->is_string()) bad_field(label, key, "a string", *value);
	return value->get<std::string>();
}

std::vector<std::string> string_list(const ordered_json& value, const std::string& label, std::string_view name) {
	std::vector<std::string> out;
	if (!value.is_array()) bad_field(label, name, "a list of strings", value);
	for (const auto& item : value) {
		if (!item.is_string()) bad_field(label, name, "a list of strings", value);
		out.push_back(item.get<std::string>());
	}
	return out;
}

template <class T, class Read>
std::vector<std::pair<std::string, T>> patterns(const ordered_json& j, const char* key, const std::string& label,
                                                Read read) {
	std::vector<std::pair<std::string, T>> out;
	const auto* value = field(j, key);
	if (!value) return out;
	if (!value->is_object()) bad_field(label, key, "an object of module patterns", *value);
	for (const auto& [pattern, v] : value->items()) {
		compile("(.*\\.)?(" + pattern + ")", label, key);
		out.emplace_back(pattern, read(v, label, fmt::format("{}.{}", key, pattern)));
	}
	return out;
}

// alpha as PEFT configs write it: an integer when it is one.
ordered_json alpha_json(double alpha) {
	if (alpha == std::floor(alpha) && std::abs(alpha) < 1e15) return static_cast<int64_t>(alpha);
	return alpha;
}

} // namespace

int64_t PeftAdapterConfig::rank_of(std::string_view module) const {
	const auto* value = pattern_value(rank_pattern, module);
	return value ? *value : r;
}

double PeftAdapterConfig::alpha_of(std::string_view module) const {
	const auto* value = pattern_value(alpha_pattern, module);
	return value ? *value : lora_alpha;
}

double PeftAdapterConfig::scaling_of(std::string_view module) const {
	const double rank = static_cast<double>(rank_of(module));
	return alpha_of(module) / (use_rslora ? std::sqrt(rank) : rank);
}

bool PeftAdapterConfig::targets(std::string_view module) const {
	if (saves(module)) return false; // PEFT never puts a LoRA on a module it saves whole
	// PEFT's shorthand for every linear layer but the output layer (saved configs list them).
	if (target_modules_regex == "all-linear") return !module.ends_with("lm_head");
	if (target_modules_regex) return matches(*target_modules_regex, module);
	for (const auto& target : target_modules)
		if (module == target || (module.size() > target.size() && module.ends_with(target) &&
		                         module[module.size() - target.size() - 1] == '.'))
			return true;
	return false;
}

bool PeftAdapterConfig::saves(std::string_view module) const {
	for (const auto& name : modules_to_save)
		if (matches("(.*\\.)?" + name + "(\\..*)?", module)) return true;
	return false;
}

PeftAdapterConfig parse_peft_config(std::string_view json_text, const std::string& label) {
	ordered_json j;
	try {
		j = ordered_json::parse(json_text);
	} catch (const nlohmann::json::exception& e) {
		throw Error(fmt::format("{}: invalid JSON: {}", show(label), escape_for_message(e.what(), 200)));
	}
	if (!j.is_object()) throw Error(fmt::format("{}: not a JSON object", show(label)));
	if (const auto type = text(j, "peft_type", label); !type.empty() && type != "LORA")
		throw Error(fmt::format("{}: peft_type is '{}'; weld reads LoRA adapters (LORA) only", show(label),
		                        escape_for_message(type, 40)));
	if (boolean(j, "use_dora", label))
		throw Error(fmt::format("{}: use_dora is set: DoRA adapters are not supported (only plain LoRA)", show(label)));

	PeftAdapterConfig config;
	config.raw = j;
	if (const auto* r = field(j, "r")) config.r = positive_int(*r, label, "r");
	config.lora_alpha = static_cast<double>(config.r);
	if (const auto* alpha = field(j, "lora_alpha")) config.lora_alpha = finite_number(*alpha, label, "lora_alpha");
	config.use_rslora = boolean(j, "use_rslora", label);
	config.fan_in_fan_out = boolean(j, "fan_in_fan_out", label);
	if (const auto* targets = field(j, "target_modules")) {
		if (targets->is_string()) {
			config.target_modules_regex = targets->get<std::string>();
			compile(*config.target_modules_regex, label, "target_modules");
		} else {
			config.target_modules = string_list(*targets, label, "target_modules");
		}
	}
	if (const auto* saved = field(j, "modules_to_save")) {
		config.modules_to_save = string_list(*saved, label, "modules_to_save");
		for (const auto& name : config.modules_to_save)
			compile(name, label, "modules_to_save");
	}
	config.rank_pattern = patterns<int64_t>(j, "rank_pattern", label, positive_int);
	config.alpha_pattern = patterns<double>(j, "alpha_pattern", label, finite_number);
	config.base_model_name_or_path = text(j, "base_model_name_or_path", label);
	config.task_type = text(j, "task_type", label);
	return config;
}

std::string peft_config_json(const PeftAdapterConfig& config) {
	ordered_json j = config.raw.is_object() ? config.raw : ordered_json::object();
	const auto set_text = [&](const char* key, const std::string& value) {
		if (!value.empty())
			j[key] = value;
		else if (!j.contains(key))
			j[key] = nullptr;
	};
	set_text("base_model_name_or_path", config.base_model_name_or_path);
	j["peft_type"] = "LORA";
	set_text("task_type", config.task_type);
	j["r"] = config.r;
	j["lora_alpha"] = alpha_json(config.lora_alpha);
	j["use_rslora"] = config.use_rslora;
	if (config.target_modules_regex)
		j["target_modules"] = *config.target_modules_regex;
	else
		j["target_modules"] = config.target_modules;
	ordered_json ranks = ordered_json::object(), alphas = ordered_json::object();
	for (const auto& [key, value] : config.rank_pattern)
		ranks[key] = value;
	for (const auto& [key, value] : config.alpha_pattern)
		alphas[key] = alpha_json(value);
	j["rank_pattern"] = ranks;
	j["alpha_pattern"] = alphas;
	j["fan_in_fan_out"] = config.fan_in_fan_out;
	if (!config.modules_to_save.empty() || (j.contains("modules_to_save") && j["modules_to_save"].is_array()))
		j["modules_to_save"] = config.modules_to_save;
	else
		j["modules_to_save"] = nullptr;
	return j.dump(2) + "\n";
}

std::string LoraModule::a_tensor_name() const {
	return fmt::format("{}{}.{}", kPrefix, name, embedding ? "lora_embedding_A" : "lora_A.weight");
}

std::string LoraModule::b_tensor_name() const {
	return fmt::format("{}{}.{}", kPrefix, name, embedding ? "lora_embedding_B" : "lora_B.weight");
}

const LoraModule* PeftAdapter::find(std::string_view module) const {
	for (const auto& m : modules)
		if (m.name == module) return &m;
	return nullptr;
}

const PeftSavedTensor* PeftAdapter::find_saved(std::string_view tensor_name) const {
	for (const auto& t : saved)
		if (t.name == tensor_name) return &t;
	return nullptr;
}

// --- reading ---

namespace {

enum class Part { A, B, Bias, EmbeddingA, EmbeddingB };

struct FactorName {
	std::string module;
	Part part;
};

std::optional<FactorName> factor_name(std::string_view rest) {
	static constexpr std::pair<std::string_view, Part> kSuffixes[] = {{".lora_A.weight", Part::A},
	                                                                  {".lora_B.weight", Part::B},
	                                                                  {".lora_B.bias", Part::Bias},
	                                                                  {".lora_embedding_A", Part::EmbeddingA},
	                                                                  {".lora_embedding_B", Part::EmbeddingB}};
	for (const auto& [suffix, part] : kSuffixes)
		if (rest.size() > suffix.size() && rest.ends_with(suffix))
			return FactorName{std::string(rest.substr(0, rest.size() - suffix.size())), part};
	return std::nullopt;
}

struct FactorTensors {
	const TensorInfo* a = nullptr;
	const TensorInfo* b = nullptr;
	const TensorInfo* bias = nullptr;
	bool embedding = false, linear = false;
};

std::vector<float> as_f32(const SafetensorsFile& file, const TensorInfo& info) {
	std::vector<float> values(info.numel());
	convert_to_f32(info.dtype, file.data(info).data(), values.data(), values.size());
	return values;
}

LoraModule load_module(const PeftAdapter& adapter, const std::string& module, const FactorTensors& t,
                       const std::string& label) {
	const auto a_name = module + (t.embedding ? ".lora_embedding_A" : ".lora_A.weight");
	const auto b_name = module + (t.embedding ? ".lora_embedding_B" : ".lora_B.weight");
	if (t.embedding && t.linear)
		throw Error(fmt::format("{}: module {} has both lora_A/lora_B and lora_embedding_A/B tensors", show(label),
		                        quote_for_message(module)));
	if (!t.a || !t.b)
		throw Error(fmt::format("{}: module {} has {} but no {}", show(label), quote_for_message(module),
		                        quote_for_message(std::string(kPrefix) + (t.a ? a_name : b_name)),
		                        quote_for_message(std::string(kPrefix) + (t.a ? b_name : a_name))));
	for (const auto* info : {t.a, t.b})
		if (info->shape.size() != 2 || !dtype_is_arithmetic(info->dtype))
			throw Error(fmt::format("{}: tensor {} must be a 2-D float matrix, got {} [{}]", show(label),
			                        quote_for_message(info->name), dtype_safetensors_name(info->dtype),
			                        fmt::join(info->shape, ", ")));
	LoraModule m;
	m.name = module;
	m.embedding = t.embedding;
	m.rank = t.a->shape[0];
	m.in_features = t.a->shape[1];
	m.out_features = t.b->shape[0];
	if (t.b->shape[1] != m.rank)
		throw Error(fmt::format("{}: module {}: rank mismatch: A is [{}] (rank {}) but B is [{}] (rank {})",
		                        show(label), quote_for_message(module), fmt::join(t.a->shape, ", "), m.rank,
		                        fmt::join(t.b->shape, ", "), t.b->shape[1]));
	if (const auto r = adapter.config.rank_of(module); static_cast<int64_t>(m.rank) != r)
		throw Error(fmt::format("{}: module {}: rank mismatch: its factors have rank {} but adapter_config.json "
		                        "gives r = {}",
		                        show(label), quote_for_message(module), m.rank, r));
	m.a = as_f32(*adapter.file, *t.a);
	m.b = as_f32(*adapter.file, *t.b);
	if (t.bias) {
		if (t.bias->shape != std::vector<uint64_t>{m.out_features} || !dtype_is_arithmetic(t.bias->dtype))
			throw Error(fmt::format("{}: tensor {} must be a float vector of {} values (B's rows)", show(label),
			                        quote_for_message(t.bias->name), m.out_features));
		if (t.embedding)
			throw Error(
			    fmt::format("{}: module {}: embeddings take no lora_B.bias", show(label), quote_for_message(module)));
		m.bias = as_f32(*adapter.file, *t.bias);
	}
	m.scaling = adapter.config.scaling_of(module);
	return m;
}

} // namespace

PeftAdapter read_peft_adapter(const fs::path& dir) {
	std::error_code ec;
	if (!fs::is_directory(dir, ec)) throw Error(fmt::format("{}: no such adapter folder", show(dir)));
	const auto config_path = dir / "adapter_config.json";
	const auto weights_path = dir / "adapter_model.safetensors";
	if (!fs::is_regular_file(config_path, ec))
		throw Error(fmt::format("{}: no adapter_config.json: not a PEFT adapter folder", show(dir)));
	if (!fs::is_regular_file(weights_path, ec))
		throw Error(fmt::format("{}: no adapter_model.safetensors{}", show(dir),
		                        fs::exists(dir / "adapter_model.bin", ec)
		                            ? " (adapter_model.bin is a pickle, which weld does not read: convert it to "
		                              "safetensors)"
		                            : ""));
	PeftAdapter adapter;
	adapter.dir = dir;
	adapter.config = parse_peft_config(read_text_file(config_path), config_path.string());
	adapter.file = std::make_shared<SafetensorsFile>(weights_path);
	const std::string label = weights_path.string();

	std::map<std::string, FactorTensors> factors;
	std::vector<std::string> order;
	for (const auto& info : adapter.file->tensors()) {
		if (!std::string_view(info.name).starts_with(kPrefix))
			throw Error(fmt::format("{}: tensor {} does not start with '{}' (not a PEFT adapter tensor)", show(label),
			                        quote_for_message(info.name), kPrefix));
		const std::string_view rest = std::string_view(info.name).substr(kPrefix.size());
		if (auto factor = factor_name(rest)) {
			auto [it, fresh] = factors.try_emplace(factor->module);
			if (fresh) order.push_back(factor->module);
			auto& t = it->second;
			const bool embedding = factor->part == Part::EmbeddingA || factor->part == Part::EmbeddingB;
			(embedding ? t.embedding : t.linear) = true;
			(factor->part == Part::A || factor->part == Part::EmbeddingA   ? t.a
			 : factor->part == Part::B || factor->part == Part::EmbeddingB ? t.b
			                                                               : t.bias) = &info;
			continue;
		}
		const auto dot = rest.rfind('.');
		const std::string_view module = dot == std::string_view::npos ? rest : rest.substr(0, dot);
		if (!adapter.config.saves(module))
			throw Error(fmt::format("{}: tensor {} is neither a LoRA factor (lora_A/lora_B/lora_embedding_A/B) nor in "
			                        "modules_to_save",
			                        show(label), quote_for_message(info.name)));
		adapter.saved.push_back({std::string(rest), &info});
	}
	for (const auto& module : order)
		adapter.modules.push_back(load_module(adapter, module, factors.at(module), label));
	return adapter;
}

// --- writing ---

void write_peft_adapter(const fs::path& dir, const PeftAdapterConfig& config, const std::vector<LoraModule>& modules,
                        DType dtype, const std::vector<PeftTensorBytes>& saved) {
	std::vector<OutputTensorSpec> specs;
	std::vector<std::vector<uint8_t>> data;
	const auto add = [&](std::string name, std::vector<uint64_t> shape, const std::vector<float>& values) {
		std::vector<uint8_t> bytes(values.size() * dtype_size(dtype));
		convert_from_f32(dtype, values.data(), bytes.data(), values.size());
		specs.push_back({std::move(name), dtype, std::move(shape)});
		data.push_back(std::move(bytes));
	};
	for (const auto& m : modules) {
		assert(m.a.size() == m.rank * m.in_features && m.b.size() == m.out_features * m.rank);
		add(m.a_tensor_name(), {m.rank, m.in_features}, m.a);
		add(m.b_tensor_name(), {m.out_features, m.rank}, m.b);
		if (!m.bias.empty()) add(fmt::format("{}{}.lora_B.bias", kPrefix, m.name), {m.out_features}, m.bias);
	}
	std::vector<std::span<const uint8_t>> views(data.begin(), data.end());
	for (const auto& t : saved) {
		specs.push_back({std::string(kPrefix) + t.name, t.dtype, t.shape});
		views.push_back(t.bytes);
	}
	// One file, as PEFT writes it: the header of a single-shard layout, then the tensors in order.
	const OutputLayout layout = plan_output_layout(specs, UINT64_MAX);
	const auto path = dir / "adapter_model.safetensors";
	std::ofstream out(path, std::ios::binary);
	const auto& shard = layout.shards.at(0);
	out.write(shard.header.data(), static_cast<std::streamsize>(shard.header.size()));
	for (size_t i : shard.tensors) {
		if (views[i].size() != specs[i].nbytes())
			throw Error(fmt::format("{}: tensor {} has {} bytes, its shape needs {}", show(path),
			                        quote_for_message(specs[i].name), views[i].size(), specs[i].nbytes()));
		assert(static_cast<uint64_t>(out.tellp()) == layout.file_offset[i]);
		out.write(reinterpret_cast<const char*>(views[i].data()), static_cast<std::streamsize>(views[i].size()));
	}
	out.close();
	if (!out) throw Error(fmt::format("{}: cannot write", show(path)));
	write_text_file(dir / "adapter_config.json", peft_config_json(config));
}

} // namespace weld
