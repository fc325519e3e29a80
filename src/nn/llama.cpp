#include "nn/llama.h"
#include "io/json.h"

#include "io/model.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "util/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <tuple>

namespace weld::nn {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kArchitectures[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                          "MixtralForCausalLM", "Qwen2MoeForCausalLM"};

const json* field(const json& j, const char* key) {
	auto it = j.find(key);
	return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::optional<int64_t> opt_int(const json& j, const char* key, const std::string& label) {
	const json* v = field(j, key);
	if (!v) return std::nullopt;
	if (!v->is_number_integer() || v->get<int64_t>() <= 0)
		throw Error(fmt::format("{}: '{}' must be a positive integer, got {}", show(label), key,
		                        escape_for_message(v->dump(), 40)));
	return v->get<int64_t>();
}

int64_t req_int(const json& j, const char* key, const std::string& label) {
	auto v = opt_int(j, key, label);
	if (!v) throw Error(fmt::format("{}: '{}' is missing", show(label), key));
	return *v;
}

double opt_double(const json& j, const char* key, double fallback, const std::string& label) {
	const json* v = field(j, key);
	if (!v) return fallback;
	if (!v->is_number() || !(v->get<double>() > 0))
		throw Error(fmt::format("{}: '{}' must be a positive number, got {}", show(label), key,
		                        escape_for_message(v->dump(), 40)));
	return v->get<double>();
}

bool opt_bool(const json& j, const char* key, bool fallback, const std::string& label) {
	const json* v = field(j, key);
	if (!v) return fallback;
	if (!v->is_boolean()) throw Error(fmt::format("{}: '{}' must be true or false", show(label), key));
	return v->get<bool>();
}

std::string architecture_of(const json& j, const std::string& label) {
	const json* a = field(j, "architectures");
	if (!a)
		throw Error(fmt::format("{}: no 'architectures'; weld runs {}", show(label), fmt::join(kArchitectures, ", ")));
	if (!a->is_array() || a->empty() || !(*a)[0].is_string())
		throw Error(fmt::format("{}: 'architectures' must be a list of strings", show(label)));
	const auto arch = (*a)[0].get<std::string>();
	if (std::find(std::begin(kArchitectures), std::end(kArchitectures), arch) == std::end(kArchitectures))
		throw Error(fmt::format("{}: architecture {} is not supported; weld runs {}", show(label),
		                        quote_for_message(arch), fmt::join(kArchitectures, ", ")));
	return arch;
}

// What the equations below do not implement is refused rather than silently run differently.
void check_unsupported(const json& j, const std::string& label) {
	if (const json* s = field(j, "rope_scaling"))
		throw Error(fmt::format("{}: rope_scaling {} is not supported (only plain rotary embeddings)", show(label),
		                        escape_for_message(s->dump(), 80)));
	if (const json* act = field(j, "hidden_act"); act && *act != "silu")
		throw Error(fmt::format("{}: hidden_act {} is not supported (only silu)", show(label),
		                        escape_for_message(act->dump(), 40)));
}

// Qwen2-MoE's list of dense layers: layer indices.
std::vector<int64_t> layer_list(const json& j, const char* key, const std::string& label) {
	const json* v = field(j, key);
	if (!v) return {};
	std::vector<int64_t> layers;
	if (v->is_array())
		for (const auto& e : *v) {
			if (!e.is_number_integer() || e.get<int64_t>() < 0) break;
			layers.push_back(e.get<int64_t>());
		}
	if (!v->is_array() || layers.size() != v->size())
		throw Error(fmt::format("{}: '{}' must be a list of layer indices, got {}", show(label), key,
		                        escape_for_message(v->dump(), 40)));
	return layers;
}

// The routing of Mixtral and Qwen2-MoE, with transformers' defaults for absent keys.
void parse_experts(const json& j, LlamaConfig& c, const std::string& label) {
	if (c.architecture == "MixtralForCausalLM") {
		c.num_experts = opt_int(j, "num_local_experts", label).value_or(8);
		c.experts_per_token = opt_int(j, "num_experts_per_tok", label).value_or(2);
		c.moe_intermediate_size = c.intermediate_size;
	} else if (c.architecture == "Qwen2MoeForCausalLM") {
		c.num_experts = opt_int(j, "num_experts", label).value_or(60);
		c.experts_per_token = opt_int(j, "num_experts_per_tok", label).value_or(4);
		c.moe_intermediate_size = opt_int(j, "moe_intermediate_size", label).value_or(1408);
		c.shared_expert_intermediate_size = opt_int(j, "shared_expert_intermediate_size", label).value_or(5632);
		c.norm_topk_prob = opt_bool(j, "norm_topk_prob", false, label);
		c.decoder_sparse_step = opt_int(j, "decoder_sparse_step", label).value_or(1);
		c.mlp_only_layers = layer_list(j, "mlp_only_layers", label);
	} else {
		return;
	}
	if (c.experts_per_token > c.num_experts)
		throw Error(fmt::format("{}: {} experts per token but only {} experts", show(label), c.experts_per_token,
		                        c.num_experts));
}

} // namespace

bool LlamaConfig::sparse_layer(int64_t layer) const {
	if (num_experts == 0 || (layer + 1) % decoder_sparse_step != 0) return false;
	return std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) == mlp_only_layers.end();
}

LlamaConfig parse_llama_config(std::string_view json_text, const std::string& label) {
	const json j = parse_json_object(json_text, label);
	LlamaConfig c;
	c.architecture = architecture_of(j, label);
	check_unsupported(j, label);
	c.hidden_size = req_int(j, "hidden_size", label);
	c.intermediate_size = req_int(j, "intermediate_size", label);
	c.num_hidden_layers = req_int(j, "num_hidden_layers", label);
	c.num_attention_heads = req_int(j, "num_attention_heads", label);
	c.num_key_value_heads = opt_int(j, "num_key_value_heads", label).value_or(c.num_attention_heads);
	c.head_dim = opt_int(j, "head_dim", label).value_or(c.hidden_size / c.num_attention_heads);
	c.vocab_size = req_int(j, "vocab_size", label);
	c.max_position_embeddings = opt_int(j, "max_position_embeddings", label).value_or(0);
	c.rms_norm_eps = opt_double(j, "rms_norm_eps", 1e-6, label);
	c.rope_theta = opt_double(j, "rope_theta", 10000.0, label);
	c.tie_word_embeddings = opt_bool(j, "tie_word_embeddings", false, label);
	// Qwen2 keeps sliding_window in its config but uses it only with use_sliding_window.
	const bool qwen = c.architecture == "Qwen2ForCausalLM" || c.architecture == "Qwen2MoeForCausalLM";
	if (!qwen || opt_bool(j, "use_sliding_window", false, label))
		c.sliding_window = opt_int(j, "sliding_window", label);
	parse_experts(j, c, label);
	if (c.num_attention_heads % c.num_key_value_heads != 0 || c.head_dim % 2 != 0)
		throw Error(fmt::format("{}: {} attention heads do not split into {} key/value heads of even size {}",
		                        show(label), c.num_attention_heads, c.num_key_value_heads, c.head_dim));
	return c;
}

// --- loading ---

namespace {

std::optional<at::ScalarType> scalar_type(DType dtype) {
	switch (dtype) {
	case DType::F32:
		return at::kFloat;
	case DType::F16:
		return at::kHalf;
	case DType::BF16:
		return at::kBFloat16;
	case DType::F64:
		return at::kDouble;
	default:
		return std::nullopt;
	}
}

// Computation type of the norms and the softmax: float32 for 16-bit models, as transformers does.
at::ScalarType wide(at::ScalarType t) {
	return t == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor read_tensor(const ModelFolder::Tensor& t, at::ScalarType dtype) {
	const auto st = scalar_type(t.info->dtype);
	if (!st)
		throw Error(fmt::format("{}: tensor {} is {}; the runtime reads F32, F16, BF16 and F64 weights",
		                        show(t.file->path()), quote_for_message(t.info->name),
		                        dtype_safetensors_name(t.info->dtype)));
	std::vector<int64_t> shape(t.info->shape.begin(), t.info->shape.end());
	auto out = at::empty(shape, at::TensorOptions().dtype(*st));
	const auto bytes = t.file->data(*t.info);
	if (!bytes.empty()) std::memcpy(out.data_ptr(), bytes.data(), bytes.size()); // little-endian, like the host
	t.file->release(*t.info);
	return out.to(dtype);
}

bool ignorable(const std::string& name) {
	// Old Llama checkpoints store the rotary frequencies, which are recomputed from rope_theta.
	return name.ends_with("rotary_emb.inv_freq");
}

} // namespace

LlamaModel LlamaModel::load(const fs::path& dir, at::ScalarType dtype) {
	if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kDouble)
		throw Error(fmt::format("{}: the runtime computes in float32, bfloat16 or float64", show(dir)));
	const ModelFolder folder(dir);
	if (!folder.config()) throw Error(fmt::format("{}: no config.json", show(dir)));
	LlamaModel m;
	m.config_ = parse_llama_config(folder.config()->text, (dir / "config.json").string());
	m.dtype_ = dtype;
	m.source_dir_ = dir;
	for (const auto& t : folder.tensors()) {
		m.source_tensors_.push_back(
		    {t.info->name, t.file->path().filename().string(), std::string(dtype_safetensors_name(t.info->dtype))});
		m.params_[t.info->name] = read_tensor(t, dtype);
	}
	// Shards in name order (model-00001-of-0000N first), so that save() splits them the same way.
	std::stable_sort(m.source_tensors_.begin(), m.source_tensors_.end(),
	                 [](const auto& a, const auto& b) { return a.file < b.file; });
	m.bind_parameters();
	return m;
}

LlamaModel LlamaModel::create(const std::string& config_json, const std::string& label, uint64_t seed) {
	LlamaModel m;
	m.config_ = parse_llama_config(config_json, label);
	if (m.config_.num_experts > 0)
		throw Error(fmt::format("{}: {} models are built from dense ones with weld moe, not created", show(label),
		                        m.config_.architecture));
	const json j = parse_json_object(config_json, label);
	const double std_dev = opt_double(j, "initializer_range", 0.02, label);
	// Qwen2 always has q/k/v biases; Llama has them (and an o bias) with attention_bias.
	const bool qkv_bias = m.config_.architecture == "Qwen2ForCausalLM" || opt_bool(j, "attention_bias", false, label);
	const bool o_bias = m.config_.architecture != "Qwen2ForCausalLM" && qkv_bias;
	if (opt_bool(j, "mlp_bias", false, label)) throw Error(fmt::format("{}: mlp_bias is not supported", show(label)));
	m.created_config_ = config_json;
	m.dtype_ = at::kFloat;
	auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
	const auto opts = at::TensorOptions().dtype(at::kFloat);
	auto add = [&](const std::string& name, at::Tensor t) {
		m.source_tensors_.push_back({name, "model.safetensors", "F32"});
		m.params_[name] = std::move(t);
	};
	auto weight = [&](const std::string& name, int64_t out, int64_t in) {
		add(name, at::normal(0.0, std_dev, {out, in}, gen, opts));
	};
	const auto& c = m.config_;
	const int64_t h = c.hidden_size, q_out = c.num_attention_heads * c.head_dim,
	              kv_out = c.num_key_value_heads * c.head_dim;
	weight("model.embed_tokens.weight", c.vocab_size, h);
	for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
		const std::string p = fmt::format("model.layers.{}.", i);
		add(p + "input_layernorm.weight", at::ones({h}, opts));
		for (const auto& [proj, out, in, bias] :
		     {std::tuple{"q_proj", q_out, h, qkv_bias}, std::tuple{"k_proj", kv_out, h, qkv_bias},
		      std::tuple{"v_proj", kv_out, h, qkv_bias}, std::tuple{"o_proj", h, q_out, o_bias}}) {
			weight(p + "self_attn." + proj + ".weight", out, in);
			if (bias) add(p + "self_attn." + proj + ".bias", at::zeros({out}, opts));
		}
		weight(p + "mlp.gate_proj.weight", c.intermediate_size, h);
		weight(p + "mlp.up_proj.weight", c.intermediate_size, h);
		weight(p + "mlp.down_proj.weight", h, c.intermediate_size);
		add(p + "post_attention_layernorm.weight", at::ones({h}, opts));
	}
	add("model.norm.weight", at::ones({h}, opts));
	if (!c.tie_word_embeddings) weight("lm_head.weight", c.vocab_size, h);
	m.bind_parameters();
	return m;
}

namespace {

class Binder {
public:
	Binder(std::map<std::string, at::Tensor>& params, const fs::path& dir) : params_(params), dir_(dir) {}

	at::Tensor get(const std::string& name, std::vector<int64_t> shape, bool optional = false) {
		auto it = params_.find(name);
		if (it == params_.end()) {
			if (optional) return {};
			throw Error(fmt::format("{}: tensor {} is missing", show(dir_), quote_for_message(name)));
		}
		if (!it->second.sizes().equals(shape))
			throw Error(fmt::format("{}: tensor {} has shape {}, expected [{}]", show(dir_), quote_for_message(name),
			                        fmt::format("[{}]", fmt::join(it->second.sizes(), ", ")), fmt::join(shape, ", ")));
		used_.insert(name);
		return it->second;
	}
	// Every stored tensor must be one the equations use: an unknown one means another architecture.
	void check_all_used(const std::string& arch) const {
		for (const auto& [name, tensor] : params_)
			if (!used_.count(name) && !ignorable(name))
				throw Error(fmt::format("{}: tensor {} is not part of a {} as weld runs it", show(dir_),
				                        quote_for_message(name), arch));
	}

private:
	std::map<std::string, at::Tensor>& params_;
	const fs::path& dir_;
	std::set<std::string> used_;
};

// The names of a SwiGLU's gate, up and down projections.
struct MlpNames {
	const char* gate;
	const char* up;
	const char* down;
};

template <class Mlp, class Proj>
Mlp bind_mlp(const std::string& prefix, MlpNames names, int64_t intermediate, int64_t hidden, Proj& proj) {
	return Mlp{proj(prefix + names.gate, intermediate, hidden), proj(prefix + names.up, intermediate, hidden),
	           proj(prefix + names.down, hidden, intermediate)};
}

// Mixtral: block_sparse_moe.{gate, experts.N.{w1, w3, w2}}; Qwen2-MoE: mlp.{gate, experts.N.{gate,
// up, down}_proj, shared_expert.*, shared_expert_gate}.
template <class SparseMoe, class Mlp, class Proj>
SparseMoe bind_sparse_moe(const std::string& layer_prefix, const LlamaConfig& c, Proj& proj) {
	const bool mixtral = c.architecture == "MixtralForCausalLM";
	const std::string p = layer_prefix + (mixtral ? "block_sparse_moe." : "mlp.");
	const MlpNames names = mixtral ? MlpNames{"w1", "w3", "w2"} : MlpNames{"gate_proj", "up_proj", "down_proj"};
	SparseMoe moe;
	moe.router = proj(p + "gate", c.num_experts, c.hidden_size);
	for (int64_t e = 0; e < c.num_experts; ++e)
		moe.experts.push_back(
		    bind_mlp<Mlp>(fmt::format("{}experts.{}.", p, e), names, c.moe_intermediate_size, c.hidden_size, proj));
	if (c.shared_expert_intermediate_size > 0) {
		moe.shared = bind_mlp<Mlp>(p + "shared_expert.", names, c.shared_expert_intermediate_size, c.hidden_size, proj);
		moe.shared_gate = proj(p + "shared_expert_gate", 1, c.hidden_size);
	}
	return moe;
}

} // namespace

void LlamaModel::bind_parameters() {
	const auto& c = config_;
	const int64_t h = c.hidden_size, q_out = c.num_attention_heads * c.head_dim,
	              kv_out = c.num_key_value_heads * c.head_dim;
	Binder b(params_, source_dir_);
	auto proj = [&](const std::string& prefix, int64_t out, int64_t in) {
		return Linear{b.get(prefix + ".weight", {out, in}), b.get(prefix + ".bias", {out}, true), prefix + ".weight"};
	};
	embed_ = b.get("model.embed_tokens.weight", {c.vocab_size, h});
	layers_.clear();
	for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
		const std::string p = fmt::format("model.layers.{}.", i);
		Layer l;
		l.input_norm = b.get(p + "input_layernorm.weight", {h});
		l.post_norm = b.get(p + "post_attention_layernorm.weight", {h});
		l.q = proj(p + "self_attn.q_proj", q_out, h);
		l.k = proj(p + "self_attn.k_proj", kv_out, h);
		l.v = proj(p + "self_attn.v_proj", kv_out, h);
		l.o = proj(p + "self_attn.o_proj", h, q_out);
		if (c.sparse_layer(i))
			l.moe = bind_sparse_moe<SparseMoe, Mlp>(p, c, proj);
		else
			l.mlp = bind_mlp<Mlp>(p + "mlp.", {"gate_proj", "up_proj", "down_proj"}, c.intermediate_size, h, proj);
		layers_.push_back(std::move(l));
	}
	final_norm_ = b.get("model.norm.weight", {h});
	// Tied: the logits use the embedding, as transformers does, even if lm_head.weight is stored.
	auto lm_head = b.get("lm_head.weight", {c.vocab_size, h}, c.tie_word_embeddings);
	lm_head_ = c.tie_word_embeddings ? at::Tensor() : lm_head;
	b.check_all_used(c.architecture);
}

const at::Tensor& LlamaModel::parameter(const std::string& name) const {
	auto it = params_.find(name);
	if (it == params_.end()) throw Error(fmt::format("model has no tensor {}", quote_for_message(name)));
	return it->second;
}

void LlamaModel::replace_parameters(const std::map<std::string, at::Tensor>& values) {
	for (const auto& [name, value] : values) {
		auto it = params_.find(name);
		if (it == params_.end()) throw Error(fmt::format("model has no tensor {}", quote_for_message(name)));
		if (!it->second.sizes().equals(value.sizes()))
			throw Error(fmt::format("tensor {}: a replacement of another shape", quote_for_message(name)));
		it->second = value;
	}
	bind_parameters();
}

void LlamaModel::set_requires_grad(bool on) {
	for (auto& [name, p] : params_)
		if (p.is_floating_point()) p.requires_grad_(on);
}

// --- forward ---

namespace {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
	auto xf = x.to(wide(x.scalar_type()));
	xf = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
	return weight * xf.to(x.scalar_type());
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
	return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
}

// (x1, x2) -> (-x2, x1) over the halves of the last dimension.
at::Tensor rotate_half(const at::Tensor& x) {
	const int64_t half = x.size(-1) / 2;
	return at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

// cos and sin [seq, head_dim] of transformers' LlamaRotaryEmbedding for positions first..first+seq-1,
// computed in float32 (float64 for a float64 model) and cast to the model's dtype.
std::pair<at::Tensor, at::Tensor> rotary(int64_t first, int64_t seq, int64_t head_dim, double theta,
                                         at::ScalarType dtype) {
	const auto opts = at::TensorOptions().dtype(wide(dtype));
	const auto exponents = at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(wide(dtype)) /
	                       static_cast<double>(head_dim);
	const auto inv_freq = 1.0 / at::pow(theta, exponents);
	const auto freqs = at::outer(at::arange(first, first + seq, opts), inv_freq);
	const auto emb = at::cat({freqs, freqs}, -1);
	return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

// Additive mask [seq, first + seq] for queries at positions first..first+seq-1 over keys at
// 0..first+seq-1: 0 where key j may be seen from query position p (j <= p, and p - j < window).
at::Tensor causal_mask(int64_t first, int64_t seq, std::optional<int64_t> window, at::ScalarType dtype) {
	const double inf = std::numeric_limits<double>::infinity();
	const int64_t keys = first + seq;
	auto mask = at::full({seq, keys}, -inf, at::TensorOptions().dtype(wide(dtype))).triu(first + 1);
	if (window && *window < keys) mask = mask + at::full({seq, keys}, -inf, mask.options()).tril(first - *window);
	return mask;
}

} // namespace

at::Tensor LlamaModel::attention(const Layer& layer, const at::Tensor& x, const at::Tensor& rope_cos,
                                 const at::Tensor& rope_sin, const at::Tensor& mask, at::Tensor* cached_keys,
                                 at::Tensor* cached_values) const {
	const int64_t batch = x.size(0), seq = x.size(1);
	const int64_t heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads, d = config_.head_dim;
	auto q = apply(layer.q, x).view({batch, seq, heads, d}).transpose(1, 2);
	auto k = apply(layer.k, x).view({batch, seq, kv_heads, d}).transpose(1, 2);
	auto v = apply(layer.v, x).view({batch, seq, kv_heads, d}).transpose(1, 2);
	q = q * rope_cos + rotate_half(q) * rope_sin;
	k = k * rope_cos + rotate_half(k) * rope_sin;
	if (cached_keys) { // the earlier positions' keys and values, then this call's
		if (cached_keys->defined()) {
			k = at::cat({*cached_keys, k}, 2);
			v = at::cat({*cached_values, v}, 2);
		}
		*cached_keys = k;
		*cached_values = v;
	}
	if (kv_heads != heads) { // query head i reads key/value head i / (heads / kv_heads)
		k = k.repeat_interleave(heads / kv_heads, 1);
		v = v.repeat_interleave(heads / kv_heads, 1);
	}
	auto scores = at::matmul(q, k.transpose(2, 3)) * (1.0 / std::sqrt(static_cast<double>(d)));
	const auto probs = at::softmax(scores.to(wide(dtype_)) + mask, -1).to(dtype_);
	const auto out = at::matmul(probs, v).transpose(1, 2).reshape({batch, seq, heads * d});
	return apply(layer.o, out);
}

at::Tensor LlamaModel::apply(const Linear& l, const at::Tensor& x) const {
	auto y = linear(x, l.weight, l.bias);
	if (observer_) observer_(l.name, x, y);
	return y;
}

at::Tensor LlamaModel::feed_forward(const Mlp& mlp, const at::Tensor& x) const {
	return apply(mlp.down, at::silu(apply(mlp.gate, x)) * apply(mlp.up, x));
}

// Each token goes to the experts_per_token experts of highest router probability, weighted by
// those probabilities (renormalized to sum 1 when norm_topk_prob). Experts see only their own
// tokens, as [1, tokens, hidden] (what the linear observer is given).
at::Tensor LlamaModel::sparse_moe(const SparseMoe& moe, const at::Tensor& x) const {
	const auto tokens = x.reshape({-1, x.size(-1)});
	const auto logits = apply(moe.router, x).reshape({tokens.size(0), config_.num_experts});
	auto [weights, chosen] = at::softmax(logits.to(wide(dtype_)), -1).topk(config_.experts_per_token, -1);
	if (config_.norm_topk_prob) weights = weights / weights.sum(-1, true);
	weights = weights.to(dtype_);
	auto out = at::zeros_like(tokens);
	for (int64_t e = 0; e < config_.num_experts; ++e) {
		const auto hit = chosen.eq(e); // [tokens, k]: at most one true per row
		const auto rows = hit.any(-1).nonzero().squeeze(-1);
		if (rows.numel() == 0) continue;
		const auto weight = (weights * hit).sum(-1).index_select(0, rows).unsqueeze(-1);
		const auto y = feed_forward(moe.experts[static_cast<size_t>(e)], tokens.index_select(0, rows).unsqueeze(0));
		out = out.index_add(0, rows, y.squeeze(0) * weight);
	}
	if (moe.shared) {
		const auto gate = at::sigmoid(apply(moe.shared_gate, x)).reshape({-1, 1});
		out = out + gate * feed_forward(*moe.shared, x).reshape_as(tokens);
	}
	return out.reshape(x.sizes());
}

at::Tensor LlamaModel::forward(const at::Tensor& input_ids, std::vector<at::Tensor>* hidden) const {
	return run(input_ids, hidden, nullptr);
}

at::Tensor LlamaModel::forward_cached(const at::Tensor& input_ids, KvCache& cache) const {
	if (cache.keys.empty()) {
		cache.keys.resize(layers_.size());
		cache.values.resize(layers_.size());
	}
	if (cache.keys.size() != layers_.size()) throw Error("forward_cached: the cache belongs to another model");
	auto logits = run(input_ids, nullptr, &cache);
	cache.positions += logits.size(1);
	return logits;
}

at::Tensor LlamaModel::run(const at::Tensor& input_ids, std::vector<at::Tensor>* hidden, KvCache* cache) const {
	const auto ids = input_ids.dim() == 1 ? input_ids.unsqueeze(0) : input_ids;
	if (ids.dim() != 2 || ids.scalar_type() != at::kLong || ids.size(1) == 0)
		throw Error("forward: input_ids must be a non-empty int64 tensor [batch, seq]");
	const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
	if (lo < 0 || hi >= config_.vocab_size)
		throw Error(fmt::format("forward: token id {} is outside the vocabulary [0, {})", lo < 0 ? lo : hi,
		                        config_.vocab_size));
	const int64_t seq = ids.size(1), first = cache ? cache->positions : 0;
	const auto [rope_cos, rope_sin] = rotary(first, seq, config_.head_dim, config_.rope_theta, dtype_);
	const auto mask = causal_mask(first, seq, config_.sliding_window, dtype_);
	const double eps = config_.rms_norm_eps;
	auto h = at::embedding(embed_, ids);
	for (size_t i = 0; i < layers_.size(); ++i) {
		const auto& layer = layers_[i];
		h = h + attention(layer, rms_norm(h, layer.input_norm, eps), rope_cos, rope_sin, mask,
		                  cache ? &cache->keys[i] : nullptr, cache ? &cache->values[i] : nullptr);
		const auto x = rms_norm(h, layer.post_norm, eps);
		h = h + (layer.moe ? sparse_moe(*layer.moe, x) : feed_forward(layer.mlp, x));
		if (hidden) hidden->push_back(h);
	}
	h = rms_norm(h, final_norm_, eps);
	const Linear head{lm_head_.defined() ? lm_head_ : embed_, at::Tensor(),
	                  lm_head_.defined() ? "lm_head.weight" : "model.embed_tokens.weight"};
	return apply(head, h);
}

at::Tensor right_padded_ids(const std::vector<std::vector<int64_t>>& sequences, size_t min_length) {
	size_t longest = min_length;
	for (const auto& s : sequences)
		longest = std::max(longest, s.size());
	auto ids = at::zeros({static_cast<int64_t>(sequences.size()), static_cast<int64_t>(longest)}, at::kLong);
	auto id = ids.accessor<int64_t, 2>();
	for (size_t b = 0; b < sequences.size(); ++b)
		for (size_t t = 0; t < sequences[b].size(); ++t)
			id[static_cast<int64_t>(b)][static_cast<int64_t>(t)] = sequences[b][t];
	return ids;
}

at::Tensor token_log_likelihoods(const at::Tensor& logits, const at::Tensor& input_ids) {
	const auto ids = input_ids.dim() == 1 ? input_ids.unsqueeze(0) : input_ids;
	const int64_t seq = ids.size(1);
	if (logits.dim() != 3 || logits.size(0) != ids.size(0) || logits.size(1) != seq)
		throw Error("token_log_likelihoods: logits [batch, seq, vocab] do not match input_ids [batch, seq]");
	const auto log_probs = at::log_softmax(logits.slice(1, 0, seq - 1).to(wide(logits.scalar_type())), -1);
	return log_probs.gather(-1, ids.slice(1, 1).unsqueeze(-1)).squeeze(-1);
}

// --- saving ---

namespace {

// The files beside the weights that describe the model and its tokenizer.
bool is_metadata_file(const fs::path& path) {
	const auto name = path.filename().string(), ext = path.extension().string();
	// Not the weights' index, nor a twin folder's description (its factors are not copied along).
	if (name == "model.safetensors.index.json" || name == "twin.json") return false;
	return ext == ".json" || ext == ".txt" || ext == ".model" || ext == ".tiktoken";
}

void copy_metadata_files(const fs::path& from, const fs::path& to) {
	for (const auto& entry : fs::directory_iterator(from))
		if (entry.is_regular_file() && is_metadata_file(entry.path()))
			fs::copy_file(entry.path(), to / entry.path().filename(), fs::copy_options::overwrite_existing);
}

} // namespace

void LlamaModel::save(const fs::path& dir) const {
	if (fs::exists(dir) && !fs::is_empty(dir))
		throw Error(fmt::format("{}: already exists and is not empty", show(dir)));
	fs::create_directories(dir);
	if (source_dir_.empty()) {
		write_text_file(dir / "config.json", created_config_);
	} else {
		copy_metadata_files(source_dir_, dir);
	}

	std::vector<OutputTensorSpec> specs;
	std::map<std::string, uint64_t> file_bytes; // per source file, to split the shards the same way
	for (const auto& s : source_tensors_) {
		const auto& t = params_.at(s.name);
		const auto dtype = *dtype_from_safetensors_name(s.dtype);
		specs.push_back({s.name, dtype, std::vector<uint64_t>(t.sizes().begin(), t.sizes().end())});
		file_bytes[s.file] += specs.back().nbytes();
	}
	// The writer fills shards greedily, as transformers does: the largest source shard as the
	// limit gives back the same split.
	uint64_t largest = 0;
	for (const auto& [file, bytes] : file_bytes)
		largest = std::max(largest, bytes);
	SafetensorsWriter writer(dir, specs, file_bytes.size() > 1 ? largest : UINT64_MAX);
	for (size_t i = 0; i < specs.size(); ++i) {
		const auto t = params_.at(specs[i].name).detach().to(*scalar_type(specs[i].dtype)).contiguous();
		writer.write(i, {static_cast<const uint8_t*>(t.data_ptr()), t.nbytes()});
	}
	writer.finish();
}

} // namespace weld::nn
