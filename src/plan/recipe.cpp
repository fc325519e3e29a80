#include "plan/recipe.h"

#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>

namespace weld {
namespace {

// Everything that can go wrong names the recipe file and the key path inside it.
struct Context {
	const std::string& label;

	[[noreturn]] void fail(const std::string& where, const std::string& what) const {
		throw Error(fmt::format("{}: {}: {}", label, where, what));
	}
};

std::string join(std::initializer_list<std::string_view> names) {
	std::string out;
	for (auto name : names)
		out += (out.empty() ? "" : ", ") + std::string(name);
	return out;
}

// A mapping's key as text: YAML allows lists and mappings as keys (`? [a, b]: 1`), recipes do not.
std::string key_string(const Context& ctx, const YAML::Node& key, const std::string& where) {
	if (!key.IsScalar()) ctx.fail(where, "a key must be a plain name, not a list or mapping");
	return key.as<std::string>();
}

void check_keys(const Context& ctx, const YAML::Node& node, const std::string& where,
                std::initializer_list<std::string_view> allowed) {
	if (!node.IsMap()) ctx.fail(where, "expected a mapping");
	for (const auto& item : node) {
		const auto key = key_string(ctx, item.first, where);
		if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
			ctx.fail(where, fmt::format("unknown key '{}' (valid keys: {})", key, join(allowed)));
	}
}

std::string scalar_string(const Context& ctx, const YAML::Node& node, const std::string& where) {
	if (!node.IsScalar()) ctx.fail(where, "expected a string");
	return node.Scalar();
}

std::optional<bool> as_bool(const YAML::Node& node) {
	const auto& s = node.Scalar();
	if (s == "true" || s == "True" || s == "TRUE") return true;
	if (s == "false" || s == "False" || s == "FALSE") return false;
	return std::nullopt;
}

std::optional<double> as_number(const YAML::Node& node) {
	double value = 0;
	if (!YAML::convert<double>::decode(node, value) || !std::isfinite(value)) return std::nullopt;
	return value;
}

ParamSetting parse_setting(const Context& ctx, const YAML::Node& node, const std::string& where);

ParamSetting parse_rules(const Context& ctx, const YAML::Node& node, const std::string& where) {
	ParamSetting setting;
	setting.kind = ParamSetting::Kind::Rules;
	for (size_t i = 0; i < node.size(); i++) {
		const auto rule_where = fmt::format("{}[{}]", where, i);
		const auto& rule_node = node[i];
		check_keys(ctx, rule_node, rule_where, {"filter", "value"});
		if (!rule_node["value"]) ctx.fail(rule_where, "missing 'value'");
		ParamSetting::Rule rule;
		if (rule_node["filter"]) rule.filter = scalar_string(ctx, rule_node["filter"], rule_where + ".filter");
		rule.value = parse_setting(ctx, rule_node["value"], rule_where + ".value");
		if (rule.value.kind == ParamSetting::Kind::Rules) ctx.fail(rule_where + ".value", "filter rules cannot nest");
		setting.rules.push_back(std::move(rule));
	}
	return setting;
}

// A list of names (cabs' pruning_order): every item a string.
ParamSetting parse_text_list(const Context& ctx, const YAML::Node& node, const std::string& where) {
	ParamSetting setting;
	setting.kind = ParamSetting::Kind::TextList;
	for (size_t i = 0; i < node.size(); i++) {
		if (!node[i].IsScalar() || as_number(node[i]) || as_bool(node[i]))
			ctx.fail(fmt::format("{}[{}]", where, i), "a list of names holds names only");
		setting.texts.push_back(node[i].Scalar());
	}
	return setting;
}

ParamSetting parse_setting(const Context& ctx, const YAML::Node& node, const std::string& where) {
	ParamSetting setting;
	if (node.IsScalar()) {
		if (auto b = as_bool(node)) {
			setting.kind = ParamSetting::Kind::Bool;
			setting.number = *b ? 1 : 0;
		} else if (auto n = as_number(node)) {
			setting.number = *n;
		} else {
			setting.kind = ParamSetting::Kind::Text; // whether text suits the parameter is the plan's call
			setting.text = node.Scalar();
		}
		return setting;
	}
	if (!node.IsSequence() || node.size() == 0)
		ctx.fail(where, "expected a number, a bool, a list of numbers (gradient) or a list of {filter, value}");
	if (node[0].IsMap()) return parse_rules(ctx, node, where);
	if (node[0].IsScalar() && !as_number(node[0]) && !as_bool(node[0])) return parse_text_list(ctx, node, where);
	setting.kind = ParamSetting::Kind::Gradient;
	for (size_t i = 0; i < node.size(); i++) {
		auto n = node[i].IsScalar() ? as_number(node[i]) : std::nullopt;
		if (!n) ctx.fail(fmt::format("{}[{}]", where, i), "a gradient holds numbers only");
		setting.gradient.push_back(*n);
	}
	return setting;
}

ParamSettings parse_parameters(const Context& ctx, const YAML::Node& node, const std::string& where) {
	ParamSettings out;
	if (!node || node.IsNull()) return out;
	if (!node.IsMap()) ctx.fail(where, "expected a mapping of parameter names to values");
	for (const auto& item : node) {
		const auto name = key_string(ctx, item.first, where);
		out.emplace_back(name, parse_setting(ctx, item.second, where + "." + name));
	}
	return out;
}

std::string parse_model_ref(const Context& ctx, const YAML::Node& node, const std::string& where) {
	auto ref = scalar_string(ctx, node, where);
	if (ref.empty()) ctx.fail(where, "empty model reference");
	// model+adapter (mergekit's LoRA references): one '+' between two non-empty parts.
	if (const auto plus = ref.find('+'); plus != std::string::npos && (plus == 0 || plus + 1 == ref.size() ||
	                                                                   ref.find('+', plus + 1) != std::string::npos))
		ctx.fail(where, fmt::format("'{}': expected MODEL+ADAPTER, one '+' between a model and a LoRA adapter", ref));
	return ref;
}

SourceSpec parse_source(const Context& ctx, const YAML::Node& node, const std::string& where, bool in_slice) {
	if (in_slice)
		check_keys(ctx, node, where, {"model", "layer_range", "parameters"});
	else
		check_keys(ctx, node, where, {"model", "parameters"});
	if (!node["model"]) ctx.fail(where, "missing 'model'");
	SourceSpec source;
	source.model = parse_model_ref(ctx, node["model"], where + ".model");
	source.parameters = parse_parameters(ctx, node["parameters"], where + ".parameters");
	if (const auto& range = node["layer_range"]) {
		int64_t first = 0, last = 0;
		if (!range.IsSequence() || range.size() != 2 || !YAML::convert<int64_t>::decode(range[0], first) ||
		    !YAML::convert<int64_t>::decode(range[1], last) || first < 0 || last <= first)
			ctx.fail(where + ".layer_range", "expected [first, last) with 0 <= first < last");
		source.layer_range = std::pair{first, last};
	} else if (in_slice) {
		ctx.fail(where, "missing 'layer_range'");
	}
	return source;
}

std::optional<DType> parse_dtype(const Context& ctx, const YAML::Node& node, const std::string& where) {
	if (!node || node.IsNull()) return std::nullopt;
	const auto name = scalar_string(ctx, node, where);
	auto dtype = dtype_from_torch_name(name);
	if (!dtype) ctx.fail(where, fmt::format("unknown dtype '{}' (valid: float32, bfloat16, float16, float64)", name));
	return dtype;
}

std::vector<SourceSpec> parse_models(const Context& ctx, const YAML::Node& models, const std::string& where) {
	if (!models.IsSequence() || models.size() == 0) ctx.fail(where, "expected a non-empty list");
	std::vector<SourceSpec> out;
	for (size_t i = 0; i < models.size(); i++)
		out.push_back(parse_source(ctx, models[i], fmt::format("{}[{}]", where, i), false));
	return out;
}

std::vector<SliceSpec> parse_slices(const Context& ctx, const YAML::Node& slices, const std::string& where) {
	if (!slices.IsSequence() || slices.size() == 0) ctx.fail(where, "expected a non-empty list");
	std::vector<SliceSpec> out;
	for (size_t i = 0; i < slices.size(); i++) {
		const auto slice_where = fmt::format("{}[{}]", where, i);
		check_keys(ctx, slices[i], slice_where, {"sources", "parameters"});
		const auto& sources = slices[i]["sources"];
		if (!sources || !sources.IsSequence() || sources.size() == 0)
			ctx.fail(slice_where + ".sources", "expected a non-empty list");
		SliceSpec slice;
		for (size_t j = 0; j < sources.size(); j++)
			slice.sources.push_back(parse_source(ctx, sources[j], fmt::format("{}.sources[{}]", slice_where, j), true));
		slice.parameters = parse_parameters(ctx, slices[i]["parameters"], slice_where + ".parameters");
		out.push_back(std::move(slice));
	}
	return out;
}

// mergekit's `modules: {NAME: {models: [...] | slices: [...], parameters: {...}}}`.
std::vector<ModuleSpec> parse_modules(const Context& ctx, const YAML::Node& modules) {
	if (!modules.IsMap() || modules.size() == 0) ctx.fail("modules", "expected a non-empty mapping of module names");
	std::vector<ModuleSpec> out;
	for (const auto& item : modules) {
		ModuleSpec module;
		module.name = key_string(ctx, item.first, "modules");
		const auto where = "modules." + module.name;
		check_keys(ctx, item.second, where, {"models", "slices", "parameters"});
		if (item.second["models"].IsDefined() == item.second["slices"].IsDefined())
			ctx.fail(where, "give either 'models' or 'slices'");
		if (const auto& models = item.second["models"]) module.models = parse_models(ctx, models, where + ".models");
		if (const auto& slices = item.second["slices"]) module.slices = parse_slices(ctx, slices, where + ".slices");
		module.parameters = parse_parameters(ctx, item.second["parameters"], where + ".parameters");
		out.push_back(std::move(module));
	}
	return out;
}

void parse_sources(const Context& ctx, const YAML::Node& root, Recipe& recipe) {
	const int given = root["models"].IsDefined() + root["slices"].IsDefined() + root["modules"].IsDefined();
	if (given > 1) ctx.fail("recipe", "give exactly one of 'models', 'slices' or 'modules'");
	if (const auto& models = root["models"])
		recipe.models = parse_models(ctx, models, "models");
	else if (const auto& slices = root["slices"])
		recipe.slices = parse_slices(ctx, slices, "slices");
	else if (const auto& modules = root["modules"])
		recipe.modules = parse_modules(ctx, modules);
	else
		ctx.fail("recipe", "needs 'models', 'slices' or 'modules'");
}

TokenEmbeddingSpec parse_token_source(const Context& ctx, const YAML::Node& node, const std::string& where) {
	TokenEmbeddingSpec spec;
	if (!node || node.IsNull()) return spec;
	if (node.IsScalar()) {
		spec.kind = TokenEmbeddingSpec::Kind::Model;
		spec.model = parse_model_ref(ctx, node, where);
		return spec;
	}
	check_keys(ctx, node, where, {"kind", "model", "token_id", "token"});
	const auto kind = node["kind"] ? scalar_string(ctx, node["kind"], where + ".kind") : "";
	if (kind == "zero") {
		check_keys(ctx, node, where, {"kind"});
		spec.kind = TokenEmbeddingSpec::Kind::Zero;
		return spec;
	}
	if (kind != "model_token")
		ctx.fail(where + ".kind", fmt::format("expected 'zero' or 'model_token', got '{}'", kind));
	spec.kind = TokenEmbeddingSpec::Kind::ModelToken;
	if (!node["model"]) ctx.fail(where, "missing 'model'");
	spec.model = parse_model_ref(ctx, node["model"], where + ".model");
	if (node["token_id"].IsDefined() == node["token"].IsDefined())
		ctx.fail(where, "give exactly one of 'token_id' and 'token'");
	if (node["token"]) spec.token = scalar_string(ctx, node["token"], where + ".token");
	int64_t id = -1;
	if (node["token_id"] && (!YAML::convert<int64_t>::decode(node["token_id"], id) || id < 0))
		ctx.fail(where + ".token_id", "expected a token id (an integer >= 0)");
	if (node["token_id"]) spec.token_id = id;
	return spec;
}

// mergekit's `tokenizer:` block: source (default union), tokens, pad_to_multiple_of.
TokenizerSpec parse_tokenizer(const Context& ctx, const YAML::Node& node) {
	check_keys(ctx, node, "tokenizer", {"source", "tokens", "pad_to_multiple_of"});
	TokenizerSpec spec;
	if (node["source"] && !node["source"].IsNull())
		spec.source = parse_model_ref(ctx, node["source"], "tokenizer.source");
	if (const auto& pad = node["pad_to_multiple_of"]; pad && !pad.IsNull()) {
		int64_t multiple = 0;
		if (!YAML::convert<int64_t>::decode(pad, multiple) || multiple < 1)
			ctx.fail("tokenizer.pad_to_multiple_of", "expected a positive integer");
		spec.pad_to_multiple_of = multiple;
	}
	const auto& tokens = node["tokens"];
	if (!tokens || tokens.IsNull()) return spec;
	if (!tokens.IsMap()) ctx.fail("tokenizer.tokens", "expected a mapping of token strings to {source, force}");
	for (const auto& item : tokens) {
		const auto token = key_string(ctx, item.first, "tokenizer.tokens");
		const auto where = fmt::format("tokenizer.tokens['{}']", token);
		if (token.empty()) ctx.fail(where, "a token cannot be empty");
		TokenEmbeddingSpec entry;
		if (!item.second.IsNull()) {
			check_keys(ctx, item.second, where, {"source", "force"});
			entry = parse_token_source(ctx, item.second["source"], where + ".source");
			if (const auto& force = item.second["force"]) {
				const auto value = force.IsScalar() ? as_bool(force) : std::nullopt;
				if (!value) ctx.fail(where + ".force", "expected true or false");
				entry.force = *value;
			}
		}
		spec.tokens.emplace_back(token, std::move(entry));
	}
	return spec;
}

} // namespace

namespace {

Recipe parse_recipe_text(const std::string& yaml_text, const std::string& label) {
	const Context ctx{label};
	YAML::Node root;
	try {
		root = YAML::Load(yaml_text);
	} catch (const YAML::Exception& e) {
		throw Error(fmt::format("{}: invalid YAML at line {}, column {}: {}", label, e.mark.line + 1, e.mark.column + 1,
		                        e.msg));
	}
	if (!root.IsMap()) ctx.fail("recipe", "expected a YAML mapping at the top level");
	check_keys(ctx, root, "recipe",
	           {"merge_method", "base_model", "models", "slices", "modules", "parameters", "dtype", "out_dtype",
	            "tokenizer_source", "tokenizer", "chat_template"});

	Recipe recipe;
	recipe.text = yaml_text;
	if (!root["merge_method"]) ctx.fail("recipe", "missing 'merge_method'");
	recipe.merge_method = scalar_string(ctx, root["merge_method"], "merge_method");
	if (root["base_model"] && !root["base_model"].IsNull())
		recipe.base_model = parse_model_ref(ctx, root["base_model"], "base_model");
	parse_sources(ctx, root, recipe);
	recipe.parameters = parse_parameters(ctx, root["parameters"], "parameters");
	recipe.dtype = parse_dtype(ctx, root["dtype"], "dtype");
	recipe.out_dtype = parse_dtype(ctx, root["out_dtype"], "out_dtype");
	if (root["tokenizer_source"] && !root["tokenizer_source"].IsNull())
		recipe.tokenizer_source = parse_model_ref(ctx, root["tokenizer_source"], "tokenizer_source");
	if (root["tokenizer"] && !root["tokenizer"].IsNull()) {
		if (recipe.tokenizer_source) ctx.fail("tokenizer", "give either 'tokenizer' or 'tokenizer_source', not both");
		recipe.tokenizer = parse_tokenizer(ctx, root["tokenizer"]);
	} else if (recipe.tokenizer_source) {
		recipe.tokenizer.emplace();
		recipe.tokenizer->source = *recipe.tokenizer_source;
	}
	if (root["chat_template"] && !root["chat_template"].IsNull()) {
		recipe.chat_template = scalar_string(ctx, root["chat_template"], "chat_template");
		if (recipe.chat_template->empty()) ctx.fail("chat_template", "empty");
	}
	return recipe;
}

} // namespace

Recipe parse_recipe(const std::string& yaml_text, const std::string& label) {
	try {
		return parse_recipe_text(yaml_text, label);
	} catch (const YAML::Exception& e) { // a conversion the checks above did not foresee
		throw Error(fmt::format("{}: invalid recipe at line {}, column {}: {}", label, e.mark.line + 1,
		                        e.mark.column + 1, e.msg));
	}
}

const ParamSetting* find_setting(const ParamSettings& settings, std::string_view name) {
	for (const auto& [key, setting] : settings)
		if (key == name) return &setting;
	return nullptr;
}

std::optional<std::string> text_setting(const ParamSettings& settings, std::string_view name,
                                        const std::string& where) {
	const auto* setting = find_setting(settings, name);
	if (!setting) return std::nullopt;
	if (setting->kind != ParamSetting::Kind::Text || setting->text.empty())
		throw Error(fmt::format("recipe: {}.{}: expected a text value (a path or a name)", where, name));
	return setting->text;
}

std::optional<std::vector<std::string>> text_list_setting(const ParamSettings& settings, std::string_view name,
                                                          const std::string& where) {
	const auto* setting = find_setting(settings, name);
	if (!setting) return std::nullopt;
	if (setting->kind == ParamSetting::Kind::TextList) return setting->texts;
	return std::vector<std::string>{*text_setting(settings, name, where)};
}

std::optional<ParamValue> evaluate_setting(const ParamSetting& setting, std::string_view tensor_name, double t) {
	switch (setting.kind) {
	case ParamSetting::Kind::Number:
		return ParamValue{setting.number, false};
	case ParamSetting::Kind::Bool:
		return ParamValue{setting.number, true};
	case ParamSetting::Kind::Text:
		return ParamValue{0, false, true, setting.text};
	case ParamSetting::Kind::TextList:
		return ParamValue{0, false, true, fmt::format("[{}]", fmt::join(setting.texts, ", "))};
	case ParamSetting::Kind::Gradient: {
		// mergekit: position t * (n - 1), linear between the two neighbouring points.
		const auto& g = setting.gradient;
		const double scaled = std::clamp(t, 0.0, 1.0) * static_cast<double>(g.size() - 1);
		const size_t i0 = static_cast<size_t>(std::floor(scaled));
		const size_t i1 = std::min(g.size() - 1, i0 + 1);
		const double frac = scaled - static_cast<double>(i0);
		return ParamValue{(1 - frac) * g[i0] + frac * g[i1], false};
	}
	case ParamSetting::Kind::Rules:
		for (const auto& rule : setting.rules)
			if (!rule.filter || *rule.filter == "*" || tensor_name.find(*rule.filter) != std::string_view::npos)
				return evaluate_setting(rule.value, tensor_name, t);
		return std::nullopt;
	}
	return std::nullopt;
}

} // namespace weld
