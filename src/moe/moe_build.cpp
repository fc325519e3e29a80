#include "moe/moe_build.h"

#include "io/model.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "linalg/linalg.h"
#include "moe/moe_config.h"
#include "moe/moe_gates.h"
#include "nn/tokenizer.h"
#include "tensor/convert.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <map>
#include <memory>
#include <optional>

namespace weld::moe {
namespace fs = std::filesystem;
using nlohmann::ordered_json;

std::string architecture_name(OutputArchitecture a) {
	switch (a) {
	case OutputArchitecture::Mixtral:
		return "Mixtral";
	case OutputArchitecture::DeepseekMoe:
		return "DeepSeek MoE";
	case OutputArchitecture::QwenMoe:
		return "Qwen MoE";
	case OutputArchitecture::Qwen3Moe:
		return "Qwen3 MoE";
	}
	return "?";
}

namespace {

constexpr OutputArchitecture kArchitectures[] = {OutputArchitecture::Mixtral, OutputArchitecture::DeepseekMoe,
                                                 OutputArchitecture::QwenMoe, OutputArchitecture::Qwen3Moe};

struct InputModel {
	std::string reference;
	fs::path dir;
	std::unique_ptr<ModelFolder> folder;
	ordered_json config;
	std::string model_type;
};

using Inputs = std::map<std::string, InputModel>;

InputModel open_model(const std::string& reference, const std::string& role) {
	InputModel m;
	m.reference = reference;
	m.dir = resolve_model_reference(reference);
	m.folder = std::make_unique<ModelFolder>(m.dir);
	if (!m.folder->config()) throw Error(fmt::format("{} {}: no config.json", role, reference));
	m.config = ordered_json::parse(m.folder->config()->text);
	const auto type = m.config.find("model_type");
	if (type == m.config.end() || !type->is_string())
		throw Error(fmt::format("{} {}: config.json has no 'model_type'", role, reference));
	m.model_type = type->get<std::string>();
	return m;
}

// The base model, then each expert and shared expert, opened once per distinct reference.
Inputs open_inputs(const MoeConfig& c) {
	Inputs inputs;
	auto add = [&](const std::string& reference, const std::string& role) {
		if (!inputs.count(reference)) inputs.emplace(reference, open_model(reference, role));
	};
	add(c.base_model, "base_model");
	for (size_t i = 0; i < c.experts.size(); ++i)
		add(c.experts[i].source_model, fmt::format("experts[{}]", i));
	for (size_t i = 0; i < c.shared_experts.size(); ++i)
		add(c.shared_experts[i].source_model, fmt::format("shared_experts[{}]", i));
	return inputs;
}

// --- output architecture, as mergekit's select_output_arch ---

// Whether every model has the same model_type, one of `allowed`.
bool same_type_among(const std::vector<const InputModel*>& models, std::initializer_list<std::string_view> allowed) {
	const auto& first = models.front()->model_type;
	if (std::find(allowed.begin(), allowed.end(), first) == allowed.end()) return false;
	return std::all_of(models.begin(), models.end(), [&](const InputModel* m) { return m->model_type == first; });
}

// Empty when the architecture takes the config, else why not.
std::string unsupported_because(OutputArchitecture a, const MoeConfig& c, const Inputs& inputs) {
	std::vector<const InputModel*> routed = {&inputs.at(c.base_model)};
	for (const auto& e : c.experts)
		routed.push_back(&inputs.at(e.source_model));
	auto all = routed;
	for (const auto& e : c.shared_experts)
		all.push_back(&inputs.at(e.source_model));
	const auto& shared = c.shared_experts;
	switch (a) {
	case OutputArchitecture::Mixtral:
		if (!shared.empty()) return "no shared experts";
		return same_type_among(routed, {"llama", "mistral"}) ? "" : "all models Llama or all Mistral";
	case OutputArchitecture::DeepseekMoe:
		if (shared.size() > 1) return "at most one shared expert";
		if (!shared.empty() && (!shared[0].positive_prompts.empty() || !shared[0].negative_prompts.empty()))
			return "a shared expert without prompts";
		return same_type_among(all, {"llama", "mistral"}) ? "" : "all models Llama or all Mistral";
	case OutputArchitecture::QwenMoe:
		if (shared.size() != 1) return "exactly one shared expert";
		if (c.gate_mode != GateMode::Random && shared[0].positive_prompts.empty())
			return "positive_prompts for the shared expert";
		return same_type_among(all, {"llama", "mistral", "qwen2"}) ? "" : "all models Llama, all Mistral or all Qwen2";
	case OutputArchitecture::Qwen3Moe:
		if (!shared.empty()) return "no shared experts";
		return same_type_among(all, {"qwen3"}) ? "" : "all models Qwen3";
	}
	return "?";
}

std::string lower(std::string s) {
	std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
	return s;
}

OutputArchitecture select_architecture(const MoeConfig& c, const Inputs& inputs, const std::string& label) {
	std::vector<OutputArchitecture> named, fitting;
	for (const auto a : kArchitectures)
		if (lower(architecture_name(a)).starts_with(lower(c.architecture))) named.push_back(a);
	if (named.empty())
		throw Error(fmt::format("{}: architecture: no output architecture starts with '{}' (Mixtral, DeepSeek MoE, "
		                        "Qwen MoE, Qwen3 MoE)",
		                        label, c.architecture));
	std::vector<std::string> reasons;
	for (const auto a : named) {
		const auto why = unsupported_because(a, c, inputs);
		if (why.empty())
			fitting.push_back(a);
		else
			reasons.push_back(fmt::format("{} needs {}", architecture_name(a), why));
	}
	if (fitting.empty())
		throw Error(fmt::format("{}: no output architecture takes these models ({})", label, fmt::join(reasons, "; ")));
	const auto chosen = std::find(fitting.begin(), fitting.end(), OutputArchitecture::Mixtral) != fitting.end()
	                        ? OutputArchitecture::Mixtral
	                        : fitting.front();
	if (chosen == OutputArchitecture::DeepseekMoe || chosen == OutputArchitecture::Qwen3Moe)
		throw Error(
		    fmt::format("{}: mergekit-moe would write a {} model here, which weld moe does not write (it writes "
		                "Mixtral and Qwen MoE; 'architecture: qwen' with one prompted shared expert)",
		                label, architecture_name(chosen)));
	return chosen;
}

// --- shapes ---

struct BaseShape {
	int64_t hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0;
};

int64_t config_int(const InputModel& m, const char* key, std::optional<int64_t> fallback = std::nullopt) {
	const auto it = m.config.find(key);
	if (it == m.config.end() || it->is_null()) {
		if (fallback) return *fallback;
		throw Error(fmt::format("base_model {}: config.json has no '{}'", m.reference, key));
	}
	if (!it->is_number_integer() || it->get<int64_t>() <= 0)
		throw Error(fmt::format("base_model {}: config.json: '{}' must be a positive integer", m.reference, key));
	return it->get<int64_t>();
}

BaseShape base_shape(const InputModel& base) {
	BaseShape s;
	s.hidden = config_int(base, "hidden_size");
	s.intermediate = config_int(base, "intermediate_size");
	s.layers = config_int(base, "num_hidden_layers");
	s.heads = config_int(base, "num_attention_heads");
	s.kv_heads = config_int(base, "num_key_value_heads", s.heads);
	s.head_dim = config_int(base, "head_dim", s.hidden / s.heads);
	s.vocab = config_int(base, "vocab_size");
	return s;
}

std::string shape_text(const std::vector<uint64_t>& shape) {
	return fmt::format("[{}]", fmt::join(shape, ", "));
}

const char* const kMlpProjections[] = {"gate_proj", "up_proj", "down_proj"};

std::vector<uint64_t> mlp_shape(const BaseShape& s, std::string_view projection) {
	const auto h = static_cast<uint64_t>(s.hidden), i = static_cast<uint64_t>(s.intermediate);
	return projection == "down_proj" ? std::vector<uint64_t>{h, i} : std::vector<uint64_t>{i, h};
}

// Every MLP weight of every layer of the expert is there, in a float type, with the base's shape.
void check_expert(const InputModel& m, const BaseShape& s, const std::string& role) {
	for (int64_t layer = 0; layer < s.layers; ++layer)
		for (const char* projection : kMlpProjections) {
			const auto name = fmt::format("model.layers.{}.mlp.{}.weight", layer, projection);
			const auto* t = m.folder->find(name);
			if (!t)
				throw Error(fmt::format("{} ({}): tensor '{}' is missing (the base model has {} layers)", role,
				                        m.reference, name, s.layers));
			if (t->info->shape != mlp_shape(s, projection))
				throw Error(fmt::format("{} ({}): tensor '{}' has shape {}, but the base model's MLP needs {}", role,
				                        m.reference, name, shape_text(t->info->shape),
				                        shape_text(mlp_shape(s, projection))));
			if (!dtype_is_arithmetic(t->info->dtype))
				throw Error(fmt::format("{} ({}): tensor '{}' is {}, not a float type", role, m.reference, name,
				                        dtype_safetensors_name(t->info->dtype)));
		}
}

std::vector<float> read_f32(const ModelFolder::Tensor& t) {
	std::vector<float> out(t.info->numel());
	convert_to_f32(t.info->dtype, t.file->data(*t.info).data(), out.data(), out.size());
	t.file->release(*t.info);
	return out;
}

// --- the output tensors ---

struct OutTensor {
	std::string name;
	std::vector<uint64_t> shape;
	DType dtype = DType::F32;
	std::function<std::vector<float>()> values;
};

struct Plan {
	const MoeConfig& config;
	const Inputs& inputs;
	const BaseShape& shape;
	OutputArchitecture architecture;
	std::optional<DType> dtype; // none: each tensor keeps its own, computed ones float32
	uint64_t seed = 0;
	std::vector<OutTensor> tensors;
};

DType out_dtype(const Plan& p, DType source) {
	return p.dtype.value_or(source);
}

// The base's non-MLP tensors: embeddings, norms, attention, lm_head.
bool base_tensor_kept(const std::string& name, OutputArchitecture a, const std::string& reference) {
	if (name.find(".mlp.") != std::string::npos || name.ends_with("rotary_emb.inv_freq")) return false;
	const bool bias = name.ends_with("_proj.bias");
	if (bias && (a == OutputArchitecture::Mixtral || name.ends_with("o_proj.bias")))
		throw Error(
		    fmt::format("base_model {}: tensor '{}': {} has no such bias", reference, name, architecture_name(a)));
	const bool known = name == "model.embed_tokens.weight" || name == "model.norm.weight" || name == "lm_head.weight" ||
	                   name.ends_with("layernorm.weight") ||
	                   (name.find(".self_attn.") != std::string::npos && (name.ends_with("_proj.weight") || bias));
	if (!known)
		throw Error(fmt::format("base_model {}: tensor '{}' is not part of a Llama, Mistral or Qwen2 model as weld moe "
		                        "reads it",
		                        reference, name));
	return true;
}

void plan_base_tensors(Plan& p) {
	const auto& base = p.inputs.at(p.config.base_model);
	for (const auto& t : base.folder->tensors()) {
		if (!base_tensor_kept(t.info->name, p.architecture, base.reference)) continue;
		if (!dtype_is_arithmetic(t.info->dtype))
			throw Error(fmt::format("base_model {}: tensor '{}' is {}, not a float type", base.reference, t.info->name,
			                        dtype_safetensors_name(t.info->dtype)));
		p.tensors.push_back({t.info->name, t.info->shape, out_dtype(p, t.info->dtype), [t] { return read_f32(t); }});
	}
	if (p.architecture != OutputArchitecture::QwenMoe) return;
	// Qwen2-MoE always has q/k/v biases: zeros where the base has none, as mergekit gives.
	for (int64_t layer = 0; layer < p.shape.layers; ++layer)
		for (const char* projection : {"q_proj", "k_proj", "v_proj"}) {
			const auto name = fmt::format("model.layers.{}.self_attn.{}.bias", layer, projection);
			if (base.folder->find(name)) continue;
			const auto heads = std::string_view(projection) == "q_proj" ? p.shape.heads : p.shape.kv_heads;
			const auto size = static_cast<uint64_t>(heads * p.shape.head_dim);
			p.tensors.push_back(
			    {name, {size}, p.dtype.value_or(DType::F32), [size] { return std::vector<float>(size); }});
		}
}

// One expert's MLP weight, with mergekit's noise_and_scale: plus N(0, noise_scale²), and the down
// projection times residual_scale.
void plan_expert_tensor(Plan& p, const ExpertSpec& expert, const std::string& source_name,
                        const std::string& out_name) {
	const auto& t = *p.inputs.at(expert.source_model).folder->find(source_name);
	const bool residual = source_name.ends_with("down_proj.weight");
	const auto noise = expert.noise_scale;
	const auto scale = residual ? expert.residual_scale : std::nullopt;
	const uint64_t key = random_stream_key(p.seed, out_name, 0);
	p.tensors.push_back({out_name, t.info->shape, out_dtype(p, t.info->dtype), [t, noise, scale, key] {
		                     auto v = read_f32(t);
		                     if (noise)
			                     for (size_t j = 0; j < v.size(); ++j)
				                     v[j] += static_cast<float>(*noise * linalg::random_normal(key, j));
		                     if (scale)
			                     for (auto& x : v)
				                     x *= static_cast<float>(*scale);
		                     return v;
	                     }});
}

void plan_router(Plan& p, const std::string& name, const GateVectors& gates, int64_t layer, int64_t first,
                 int64_t count) {
	std::vector<float> rows(gates.row(layer, first), gates.row(layer, first) + count * gates.hidden);
	p.tensors.push_back({name,
	                     {static_cast<uint64_t>(count), static_cast<uint64_t>(gates.hidden)},
	                     p.dtype.value_or(DType::F32),
	                     [rows = std::move(rows)] { return rows; }});
}

// Mixtral: block_sparse_moe.experts.N.{w1 = gate_proj, w2 = down_proj, w3 = up_proj}.
void plan_mixtral_layer(Plan& p, int64_t layer, const GateVectors& gates) {
	const auto prefix = fmt::format("model.layers.{}.", layer);
	constexpr std::pair<const char*, const char*> kNames[] = {
	    {"gate_proj", "w1"}, {"down_proj", "w2"}, {"up_proj", "w3"}};
	for (size_t e = 0; e < p.config.experts.size(); ++e)
		for (const auto& [source, target] : kNames)
			plan_expert_tensor(p, p.config.experts[e], fmt::format("{}mlp.{}.weight", prefix, source),
			                   fmt::format("{}block_sparse_moe.experts.{}.{}.weight", prefix, e, target));
	plan_router(p, prefix + "block_sparse_moe.gate.weight", gates, layer, 0,
	            static_cast<int64_t>(p.config.experts.size()));
}

// Qwen2-MoE: mlp.experts.N.*_proj, mlp.shared_expert.*_proj, mlp.gate, mlp.shared_expert_gate.
void plan_qwen_layer(Plan& p, int64_t layer, const GateVectors& gates) {
	const auto prefix = fmt::format("model.layers.{}.mlp.", layer);
	const auto routed = static_cast<int64_t>(p.config.experts.size());
	for (const char* projection : kMlpProjections) {
		const auto source = fmt::format("{}{}.weight", prefix, projection);
		for (size_t e = 0; e < p.config.experts.size(); ++e)
			plan_expert_tensor(p, p.config.experts[e], source,
			                   fmt::format("{}experts.{}.{}.weight", prefix, e, projection));
		plan_expert_tensor(p, p.config.shared_experts[0], source,
		                   fmt::format("{}shared_expert.{}.weight", prefix, projection));
	}
	plan_router(p, prefix + "gate.weight", gates, layer, 0, routed);
	plan_router(p, prefix + "shared_expert_gate.weight", gates, layer, routed, 1);
}

// --- config.json ---

// mergekit builds MixtralConfig / Qwen2MoeConfig from the base config's keys: they are kept, the
// routing keys set, and the new class's defaults added where absent.
ordered_json output_config(const Plan& p) {
	auto j = p.inputs.at(p.config.base_model).config;
	const auto experts = static_cast<int64_t>(p.config.experts.size());
	auto set_default = [&](const char* key, const ordered_json& value) {
		if (!j.contains(key)) j[key] = value;
	};
	if (p.architecture == OutputArchitecture::Mixtral) {
		j["architectures"] = {"MixtralForCausalLM"};
		j["model_type"] = "mixtral";
		j["num_local_experts"] = experts;
		j["num_experts_per_tok"] = p.config.experts_per_token;
		j["sliding_window"] = nullptr;
		set_default("output_router_logits", false);
		set_default("router_aux_loss_coef", 0.001);
		set_default("router_jitter_noise", 0.0);
	} else {
		j["architectures"] = {"Qwen2MoeForCausalLM"};
		j["model_type"] = "qwen2_moe";
		j["num_experts"] = experts;
		j["num_experts_per_tok"] = p.config.experts_per_token;
		j["decoder_sparse_step"] = 1;
		j["norm_topk_prob"] = true;
		j["sliding_window"] = nullptr;
		j["use_sliding_window"] = false;
		j["shared_expert_intermediate_size"] = p.shape.intermediate;
		j["moe_intermediate_size"] = p.shape.intermediate;
		set_default("mlp_only_layers", ordered_json::array());
		set_default("output_router_logits", false);
		set_default("router_aux_loss_coef", 0.001);
	}
	if (p.dtype) j["torch_dtype"] = std::string(dtype_torch_name(*p.dtype));
	return j;
}

std::optional<DType> select_dtype(const MoeConfig& c, const InputModel& base) {
	if (c.dtype) return c.dtype;
	const auto it = base.config.find("torch_dtype");
	if (it == base.config.end() || !it->is_string()) return std::nullopt;
	return dtype_from_torch_name(it->get<std::string>());
}

// --- gates ---

GateVectors gates_for(const MoeConfig& c, const InputModel& base, const BaseShape& s, const PromptStates& states,
                      uint64_t seed, const std::string& label) {
	// mergekit gates the shared experts too when they have prompts, or in the random modes.
	std::vector<const ExpertSpec*> gated;
	for (const auto& e : c.experts)
		gated.push_back(&e);
	for (const auto& e : c.shared_experts)
		if (!e.positive_prompts.empty() || !uses_prompts(c.gate_mode)) gated.push_back(&e);
	GateSources sources{s.layers, s.hidden, {}, {}, {}, seed};
	if (states)
		sources.prompt_states = [&](const std::vector<int64_t>& ids, bool average) {
			return states(base.dir, ids, average);
		};
	if (uses_prompts(c.gate_mode)) {
		if (const auto own = nn::own_tokenizer_file(base.dir); !own.empty())
			throw Error(fmt::format("{}: gate_mode {} tokenizes the prompts with weld's byte tokenizer, but base_model "
			                        "{} has a tokenizer of its own ({}); use gate_mode random or uniform_random",
			                        label, c.gate_mode_name, base.reference, own));
		const nn::ByteTokenizer tokenizer(s.vocab, base.reference);
		sources.tokenize = [tokenizer](const std::string& text) { return tokenizer.encode(text); };
	}
	if (needs_hidden_states(c.gate_mode) && !states)
		throw Error(fmt::format("{}: gate_mode {} runs the base model, which needs weld built with libtorch", label,
		                        c.gate_mode_name));
	if (c.gate_mode == GateMode::CheapEmbed) {
		const auto* embed = base.folder->find("model.embed_tokens.weight");
		if (!embed || embed->info->shape !=
		                  std::vector<uint64_t>{static_cast<uint64_t>(s.vocab), static_cast<uint64_t>(s.hidden)})
			throw Error(fmt::format("base_model {}: no model.embed_tokens.weight of shape [{}, {}] for cheap_embed",
			                        base.reference, s.vocab, s.hidden));
		sources.embedding = [embed] { return read_f32(*embed); };
	}
	return compute_gate_vectors(c.gate_mode, gated, sources);
}

std::string degenerate_warning(const std::vector<int64_t>& layers, int64_t total) {
	const auto which = static_cast<int64_t>(layers.size()) >= total
	                       ? std::string("ALL layers have")
	                       : fmt::format("layer{} {} {}", layers.size() == 1 ? "" : "s", fmt::join(layers, ", "),
	                                     layers.size() == 1 ? "has" : "have");
	return fmt::format("{} degenerate routing parameters - your prompts may be too similar; one or more experts "
	                   "will be underutilized",
	                   which);
}

// --- writing ---

uint64_t write_tensors(const fs::path& dir, const std::vector<OutTensor>& tensors, uint64_t max_shard_bytes) {
	std::vector<OutputTensorSpec> specs;
	for (const auto& t : tensors)
		specs.push_back({t.name, t.dtype, t.shape});
	SafetensorsWriter writer(dir, specs, max_shard_bytes);
	std::vector<uint8_t> bytes;
	for (size_t i = 0; i < tensors.size(); ++i) { // one tensor in memory at a time
		const auto values = tensors[i].values();
		bytes.resize(specs[i].nbytes());
		convert_from_f32(specs[i].dtype, values.data(), bytes.data(), values.size());
		writer.write(i, bytes);
	}
	writer.finish();
	return writer.layout().total_size;
}

} // namespace

MoeSummary build_moe(const MoeOptions& options, const PromptStates& prompt_states) {
	const auto label = options.config_path.string();
	const auto config = parse_moe_config(read_text_file(options.config_path), label);
	check_moe_config(config, options.allow_all_same, label);
	OutputFolder out(options.out, options.force); // refuses an existing output before any work
	const auto inputs = open_inputs(config);
	const auto& base = inputs.at(config.base_model);
	MoeSummary summary;
	summary.warnings = config.warnings;
	summary.architecture = select_architecture(config, inputs, label);
	const auto shape = base_shape(base);
	for (size_t i = 0; i < config.experts.size(); ++i)
		check_expert(inputs.at(config.experts[i].source_model), shape, fmt::format("experts[{}]", i));
	for (size_t i = 0; i < config.shared_experts.size(); ++i)
		check_expert(inputs.at(config.shared_experts[i].source_model), shape, fmt::format("shared_experts[{}]", i));

	const auto gates = gates_for(config, base, shape, prompt_states, options.seed, label);
	if (const auto degenerate = degenerate_layers(gates); !degenerate.empty())
		summary.warnings.push_back(degenerate_warning(degenerate, shape.layers));

	Plan plan{config, inputs, shape, summary.architecture, select_dtype(config, base), options.seed, {}};
	plan_base_tensors(plan);
	for (int64_t layer = 0; layer < shape.layers; ++layer)
		if (plan.architecture == OutputArchitecture::Mixtral)
			plan_mixtral_layer(plan, layer, gates);
		else
			plan_qwen_layer(plan, layer, gates);

	write_text_file(out.path() / "config.json", output_config(plan).dump(2) + "\n");
	summary.bytes = write_tensors(out.path(), plan.tensors, options.max_shard_bytes);
	summary.tensors = plan.tensors.size();
	copy_tokenizer_files(base.dir, out.path());
	write_text_file(out.path() / "mergekit_moe_config.yml", config.text);
	out.publish();
	return summary;
}

} // namespace weld::moe
