#include "moe/moe_config.h"

#include "util/error.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace weld::moe {
namespace {

constexpr std::pair<const char*, GateMode> kGateModes[] = {
    {"hidden", GateMode::Hidden},        {"hidden_last", GateMode::Hidden},
    {"hidden_avg", GateMode::HiddenAvg}, {"cheap_embed", GateMode::CheapEmbed},
    {"random", GateMode::Random},        {"uniform_random", GateMode::UniformRandom}};

// Every error names the file and the key path inside it.
struct Context {
	const std::string& label;
	std::vector<std::string>& warnings;

	[[noreturn]] void fail(const std::string& where, const std::string& what) const {
		throw Error(fmt::format("{}: {}: {}", label, where, what));
	}
	void warn_unknown_keys(const YAML::Node& node, const std::string& where,
	                       std::initializer_list<std::string_view> known) const {
		for (const auto& item : node) {
			const auto key = item.first.Scalar();
			if (std::find(known.begin(), known.end(), key) == known.end())
				warnings.push_back(
				    fmt::format("{}: {}: unknown key '{}' ignored, as mergekit-moe ignores it", label, where, key));
		}
	}
};

bool present(const YAML::Node& node) {
	return node && !node.IsNull();
}

std::string text(const Context& ctx, const YAML::Node& node, const std::string& where) {
	if (!node.IsScalar()) ctx.fail(where, "expected a string");
	return node.Scalar();
}

std::optional<double> number(const Context& ctx, const YAML::Node& node, const std::string& where) {
	if (!present(node)) return std::nullopt;
	double value = 0;
	if (!node.IsScalar() || !YAML::convert<double>::decode(node, value) || !std::isfinite(value))
		ctx.fail(where, "expected a number");
	return value;
}

std::vector<std::string> prompts(const Context& ctx, const YAML::Node& node, const std::string& where) {
	if (!present(node)) return {};
	if (!node.IsSequence()) ctx.fail(where, "expected a list of prompts");
	std::vector<std::string> out;
	for (size_t i = 0; i < node.size(); ++i)
		out.push_back(text(ctx, node[i], fmt::format("{}[{}]", where, i)));
	return out;
}

ExpertSpec parse_expert(const Context& ctx, const YAML::Node& node, const std::string& where) {
	if (!node.IsMap()) ctx.fail(where, "expected a mapping with source_model");
	ctx.warn_unknown_keys(node, where,
	                      {"source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale"});
	if (!present(node["source_model"])) ctx.fail(where, "missing 'source_model'");
	ExpertSpec e;
	e.source_model = text(ctx, node["source_model"], where + ".source_model");
	e.positive_prompts = prompts(ctx, node["positive_prompts"], where + ".positive_prompts");
	e.negative_prompts = prompts(ctx, node["negative_prompts"], where + ".negative_prompts");
	e.noise_scale = number(ctx, node["noise_scale"], where + ".noise_scale");
	e.residual_scale = number(ctx, node["residual_scale"], where + ".residual_scale");
	return e;
}

std::vector<ExpertSpec> parse_experts(const Context& ctx, const YAML::Node& node, const std::string& where) {
	if (!present(node)) return {};
	if (!node.IsSequence()) ctx.fail(where, "expected a list of experts");
	std::vector<ExpertSpec> out;
	for (size_t i = 0; i < node.size(); ++i)
		out.push_back(parse_expert(ctx, node[i], fmt::format("{}[{}]", where, i)));
	return out;
}

GateMode parse_gate_mode(const Context& ctx, const std::string& name) {
	for (const auto& [known, mode] : kGateModes)
		if (name == known) return mode;
	ctx.fail(
	    "gate_mode",
	    fmt::format("unknown gate mode '{}' (valid: hidden, hidden_avg, cheap_embed, random, uniform_random)", name));
}

YAML::Node load(const std::string& yaml_text, const std::string& label) {
	try {
		return YAML::Load(yaml_text);
	} catch (const YAML::Exception& e) {
		throw Error(fmt::format("{}: invalid YAML at line {}, column {}: {}", label, e.mark.line + 1, e.mark.column + 1,
		                        e.msg));
	}
}

} // namespace

MoeConfig parse_moe_config(const std::string& yaml_text, const std::string& label) {
	MoeConfig c;
	const Context ctx{label, c.warnings};
	const YAML::Node root = load(yaml_text, label);
	if (!root.IsMap()) ctx.fail("config", "expected a YAML mapping at the top level");
	ctx.warn_unknown_keys(
	    root, "config",
	    {"base_model", "experts", "gate_mode", "dtype", "experts_per_token", "shared_experts", "architecture"});
	c.text = yaml_text;
	if (!present(root["base_model"])) ctx.fail("config", "missing 'base_model' (the model whose attention is kept)");
	c.base_model = text(ctx, root["base_model"], "base_model");
	if (!present(root["experts"])) ctx.fail("config", "missing 'experts'");
	c.experts = parse_experts(ctx, root["experts"], "experts");
	c.shared_experts = parse_experts(ctx, root["shared_experts"], "shared_experts");
	if (present(root["gate_mode"])) c.gate_mode_name = text(ctx, root["gate_mode"], "gate_mode");
	c.gate_mode = parse_gate_mode(ctx, c.gate_mode_name);
	if (present(root["dtype"])) {
		const auto name = text(ctx, root["dtype"], "dtype");
		c.dtype = dtype_from_torch_name(name);
		if (!c.dtype || !dtype_is_arithmetic(*c.dtype))
			ctx.fail("dtype", fmt::format("unknown dtype '{}' (valid: float32, bfloat16, float16, float64)", name));
	}
	if (present(root["experts_per_token"])) {
		const auto k = number(ctx, root["experts_per_token"], "experts_per_token");
		if (*k != std::floor(*k)) ctx.fail("experts_per_token", "expected a whole number");
		c.experts_per_token = static_cast<int64_t>(*k);
	}
	if (present(root["architecture"])) c.architecture = text(ctx, root["architecture"], "architecture");
	return c;
}

bool needs_hidden_states(GateMode mode) {
	return mode == GateMode::Hidden || mode == GateMode::HiddenAvg;
}

bool uses_prompts(GateMode mode) {
	return mode != GateMode::Random && mode != GateMode::UniformRandom;
}

void check_moe_config(const MoeConfig& c, bool allow_all_same, const std::string& label) {
	auto fail = [&](const std::string& what) { throw Error(fmt::format("{}: {}", label, what)); };
	if (c.experts_per_token < 1) fail(fmt::format("experts_per_token must be >= 1, got {}", c.experts_per_token));
	if (static_cast<int64_t>(c.experts.size()) < c.experts_per_token)
		fail(fmt::format("{} experts for experts_per_token {}: at least as many experts as experts per token",
		                 c.experts.size(), c.experts_per_token));
	const bool shared_prompts = !c.shared_experts.empty() && !c.shared_experts[0].positive_prompts.empty();
	for (const auto& e : c.shared_experts)
		if (e.positive_prompts.empty() == shared_prompts)
			fail("shared_experts: give positive_prompts for all shared experts or for none");
	if (!uses_prompts(c.gate_mode)) return;
	for (size_t i = 0; i < c.experts.size(); ++i)
		if (c.experts[i].positive_prompts.empty())
			fail(fmt::format("experts[{}] ({}) has no positive_prompts, which gate_mode {} needs", i,
			                 c.experts[i].source_model, c.gate_mode_name));
	const auto same_prompts = [&](const ExpertSpec& e) {
		return e.positive_prompts == c.experts[0].positive_prompts &&
		       e.negative_prompts == c.experts[0].negative_prompts;
	};
	if (std::all_of(c.experts.begin() + 1, c.experts.end(), same_prompts))
		fail("the positive and negative prompts are the same for every expert, which routes nothing apart: give each "
		     "expert prompts that show what it should be chosen for");
	const auto same_model = [&](const ExpertSpec& e) { return e.source_model == c.experts[0].source_model; };
	if (!allow_all_same && std::all_of(c.experts.begin() + 1, c.experts.end(), same_model))
		fail("every expert is the same model, which costs more than that model and computes the same; to train it "
		     "further anyway, pass --i-understand-this-is-not-useful-without-training");
}

} // namespace weld::moe
