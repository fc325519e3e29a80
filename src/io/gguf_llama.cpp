#include "io/gguf_llama.h"

#include "io/output_folder.h"
#include "io/safetensors.h"
#include "io/tokenizer_files.h"
#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cctype>
#include <unordered_map>

namespace weld {
namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace {

// llama.cpp's token types (llama_token_type).
enum TokenType : int64_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// llama.cpp's file types (llama_ftype) for the tensors' main type.
uint32_t file_type_of(GgmlType type) {
	switch (type) {
	case GgmlType::F32:
		return 0;
	case GgmlType::F16:
		return 1;
	case GgmlType::Q8_0:
		return 7;
	case GgmlType::BF16:
		return 32;
	}
	return 1;
}

// Split regexes of tokenizer.json's byte-level pre-tokenizers and llama.cpp's name for each
// (tokenizer.ggml.pre): GPT-2's, Llama 3's and Qwen2's.
constexpr std::array<std::pair<std::string_view, std::string_view>, 3> kPreTokenizers{{
    {"gpt-2", R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"},
    {"llama-bpe",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
    {"qwen2",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
}};

[[noreturn]] void fail(const std::string& where, const std::string& what) {
	throw Error(fmt::format("{}: {}", where, what));
}

int64_t positive_int(const json& config, const char* key, const std::string& label) {
	if (!config.contains(key) || !config[key].is_number_integer() || config[key].get<int64_t>() <= 0)
		fail(label, fmt::format("config.json: '{}' must be a positive integer", key));
	return config[key].get<int64_t>();
}

json parse_json_file(const fs::path& path) {
	try {
		return json::parse(read_text_file(path));
	} catch (const json::exception& e) {
		fail(path.string(), fmt::format("not valid JSON: {}", e.what()));
	}
}

// "model.layers.12.mlp.up_proj.weight" → {12, "mlp.up_proj.weight"}.
std::optional<std::pair<std::string, std::string>> split_layer(const std::string& name, std::string_view prefix) {
	if (!name.starts_with(prefix)) return std::nullopt;
	const size_t start = prefix.size(), dot = name.find('.', start);
	if (dot == std::string::npos || dot == start) return std::nullopt;
	for (size_t i = start; i < dot; i++)
		if (!std::isdigit(static_cast<unsigned char>(name[i]))) return std::nullopt;
	return std::pair{name.substr(start, dot - start), name.substr(dot + 1)};
}

constexpr std::array<std::pair<std::string_view, std::string_view>, 3> kTopNames{{
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
}};
constexpr std::array<std::pair<std::string_view, std::string_view>, 13> kLayerNames{{
    {"input_layernorm.weight", "attn_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
}};

} // namespace

GgufLlamaConfig llama_config_from_json(const std::string& config_json, const std::string& label) {
	json config;
	try {
		config = json::parse(config_json);
	} catch (const json::exception& e) {
		fail(label, fmt::format("config.json is not valid JSON: {}", e.what()));
	}
	GgufLlamaConfig c;
	if (config.contains("architectures") && config["architectures"].is_array() && !config["architectures"].empty() &&
	    config["architectures"][0].is_string())
		c.hf_architecture = config["architectures"][0].get<std::string>();
	if (c.hf_architecture == "LlamaForCausalLM" || c.hf_architecture == "MistralForCausalLM")
		c.arch = "llama";
	else if (c.hf_architecture == "Qwen2ForCausalLM")
		c.arch = "qwen2";
	else
		fail(label, fmt::format("architecture '{}' cannot be written as GGUF (LlamaForCausalLM, MistralForCausalLM and "
		                        "Qwen2ForCausalLM can)",
		                        escape_for_message(c.hf_architecture)));
	if (config.contains("rope_scaling") && !config["rope_scaling"].is_null())
		fail(label, "config.json: rope_scaling is not supported for GGUF output");
	c.layers = positive_int(config, "num_hidden_layers", label);
	c.hidden = positive_int(config, "hidden_size", label);
	c.intermediate = positive_int(config, "intermediate_size", label);
	c.heads = positive_int(config, "num_attention_heads", label);
	c.kv_heads = config.contains("num_key_value_heads") ? positive_int(config, "num_key_value_heads", label) : c.heads;
	c.head_dim = config.contains("head_dim") && !config["head_dim"].is_null() ? positive_int(config, "head_dim", label)
	                                                                          : c.hidden / c.heads;
	c.context_length =
	    config.contains("max_position_embeddings") ? positive_int(config, "max_position_embeddings", label) : 2048;
	if (config.contains("rope_theta") && config["rope_theta"].is_number()) c.rope_theta = config["rope_theta"];
	if (config.contains("rms_norm_eps") && config["rms_norm_eps"].is_number()) c.rms_eps = config["rms_norm_eps"];
	if (c.head_dim % 2 != 0) fail(label, fmt::format("config.json: head dimension {} is odd", c.head_dim));
	return c;
}

std::optional<std::string> gguf_tensor_name(const std::string& hf_name, const std::string& label) {
	for (const auto& [hf, gguf] : kTopNames)
		if (hf_name == hf) return std::string(gguf);
	if (auto layer = split_layer(hf_name, "model.layers.")) {
		if (layer->second == "self_attn.rotary_emb.inv_freq") return std::nullopt;
		for (const auto& [hf, gguf] : kLayerNames)
			if (layer->second == hf) return fmt::format("blk.{}.{}", layer->first, gguf);
	}
	fail(label, fmt::format("tensor {} has no GGUF name (Llama-family tensors only)", quote_for_message(hf_name)));
}

std::string hf_tensor_name(const std::string& gguf_name, const std::string& label) {
	for (const auto& [hf, gguf] : kTopNames)
		if (gguf_name == gguf) return std::string(hf);
	if (auto layer = split_layer(gguf_name, "blk."))
		for (const auto& [hf, gguf] : kLayerNames)
			if (layer->second == gguf) return fmt::format("model.layers.{}.{}", layer->first, hf);
	fail(label, fmt::format("tensor {} is not a Llama-family tensor weld knows", quote_for_message(gguf_name)));
}

uint64_t QkPermutation::to_gguf(uint64_t r) const {
	if (heads == 0) return r;
	const uint64_t head_dim = rows / heads, half = head_dim / 2;
	const uint64_t h = r / head_dim, within = r % head_dim, j = within / half, i = within % half;
	return h * head_dim + 2 * i + j;
}

uint64_t QkPermutation::to_hf(uint64_t r) const {
	if (heads == 0) return r;
	const uint64_t head_dim = rows / heads, half = head_dim / 2;
	const uint64_t h = r / head_dim, within = r % head_dim, i = within / 2, j = within % 2;
	return h * head_dim + j * half + i;
}

QkPermutation qk_permutation(const std::string& hf_name, const GgufLlamaConfig& config, uint64_t rows) {
	if (!config.permute_qk()) return {};
	const bool q = hf_name.ends_with("self_attn.q_proj.weight") || hf_name.ends_with("self_attn.q_proj.bias");
	const bool k = hf_name.ends_with("self_attn.k_proj.weight") || hf_name.ends_with("self_attn.k_proj.bias");
	if (!q && !k) return {};
	const auto heads = static_cast<uint64_t>(q ? config.heads : config.kv_heads);
	if (rows % (2 * heads) != 0)
		throw Error(fmt::format("tensor {}: {} rows do not split into {} heads of an even size",
		                        quote_for_message(hf_name), rows, heads));
	return {heads, rows};
}

// --- metadata: Hugging Face → GGUF ---

namespace {

struct Vocabulary {
	std::vector<std::string> tokens;
	std::vector<int64_t> types;
	std::unordered_map<std::string, int64_t> ids;
};

std::string merge_text(const json& merge) {
	if (merge.is_string()) return merge.get<std::string>();
	if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string())
		return merge[0].get<std::string>() + " " + merge[1].get<std::string>();
	throw Error("a merge is neither \"a b\" nor [\"a\", \"b\"]");
}

// "Metaspace" anywhere in a pre-tokenizer or decoder (also inside a Sequence).
bool mentions(const json& node, std::string_view type) {
	if (node.is_object()) {
		if (node.contains("type") && node["type"] == type) return true;
		for (const auto& [key, value] : node.items())
			if (mentions(value, type)) return true;
	} else if (node.is_array()) {
		for (const auto& value : node)
			if (mentions(value, type)) return true;
	}
	return false;
}

// llama.cpp's pre-tokenizer for a byte-level tokenizer.json: by its Split regex, else GPT-2's.
std::string pre_tokenizer_name(const json& tokenizer) {
	const json& pre = tokenizer.contains("pre_tokenizer") ? tokenizer["pre_tokenizer"] : json();
	std::vector<const json*> parts{&pre};
	if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers"))
		for (const auto& p : pre["pretokenizers"])
			parts.push_back(&p);
	for (const json* p : parts)
		if (p->is_object() && p->value("type", "") == "Split" && p->contains("pattern") &&
		    (*p)["pattern"].contains("Regex"))
			for (const auto& [name, regex] : kPreTokenizers)
				if ((*p)["pattern"]["Regex"] == regex) return std::string(name);
	return mentions(pre, "ByteLevel") ? "gpt-2" : "default";
}

bool is_byte_token(const std::string& token) {
	return token.size() == 6 && token.starts_with("<0x") && token.ends_with(">") &&
	       std::isxdigit(static_cast<unsigned char>(token[3])) && std::isxdigit(static_cast<unsigned char>(token[4]));
}

Vocabulary read_vocabulary(const json& tokenizer, bool spm, uint64_t rows, const std::string& where) {
	Vocabulary v;
	v.tokens.resize(rows);
	v.types.assign(rows, kUnused);
	for (uint64_t i = 0; i < rows; i++)
		v.tokens[i] = fmt::format("[PAD{}]", i);
	auto place = [&](const std::string& token, const json& id_value, int64_t type) {
		if (!id_value.is_number_integer() || id_value.get<int64_t>() < 0)
			fail(where, fmt::format("token {} has no valid id", quote_for_message(token)));
		const auto id = id_value.get<int64_t>();
		if (static_cast<uint64_t>(id) >= rows)
			fail(where, fmt::format("token {} has id {}, but the embedding has only {} rows", quote_for_message(token),
			                        id, rows));
		v.tokens[static_cast<size_t>(id)] = token;
		v.types[static_cast<size_t>(id)] = type;
		v.ids[token] = id;
	};
	const json& model = tokenizer["model"];
	if (!model.contains("vocab") || !model["vocab"].is_object()) fail(where, "model.vocab is not an object");
	const std::string unk = model.contains("unk_token") && model["unk_token"].is_string() ? model["unk_token"] : "";
	for (const auto& [token, id] : model["vocab"].items())
		place(token, id, spm && is_byte_token(token) ? kByte : spm && token == unk ? kUnknown : kNormal);
	if (tokenizer.contains("added_tokens") && tokenizer["added_tokens"].is_array())
		for (const auto& added : tokenizer["added_tokens"]) {
			if (!added.is_object() || !added.contains("content") || !added["content"].is_string())
				fail(where, "an entry of added_tokens has no content");
			const bool special = added.value("special", false);
			place(added["content"], added.contains("id") ? added["id"] : json(), special ? kControl : kUserDefined);
		}
	return v;
}

// A special token of tokenizer_config.json ("bos_token": "<s>" or {"content": "<s>"}).
std::optional<int64_t> special_id(const json& tokenizer_config, const char* key, const Vocabulary& vocab) {
	if (!tokenizer_config.contains(key)) return std::nullopt;
	const json& value = tokenizer_config[key];
	const json& content = value.is_object() && value.contains("content") ? value["content"] : value;
	if (!content.is_string()) return std::nullopt;
	auto it = vocab.ids.find(content.get<std::string>());
	return it == vocab.ids.end() ? std::nullopt : std::optional<int64_t>(it->second);
}

// config.json's bos_token_id / eos_token_id (an integer or a list of them: the first).
std::optional<int64_t> config_id(const json& config, const char* key) {
	if (!config.contains(key)) return std::nullopt;
	const json& value = config[key].is_array() && !config[key].empty() ? config[key][0] : config[key];
	return value.is_number_integer() ? std::optional<int64_t>(value.get<int64_t>()) : std::nullopt;
}

void add_special_tokens(GgufMetadata& md, const fs::path& dir, const Vocabulary& vocab) {
	const json tokenizer_config =
	    fs::exists(dir / "tokenizer_config.json") ? parse_json_file(dir / "tokenizer_config.json") : json::object();
	const json config = fs::exists(dir / "config.json") ? parse_json_file(dir / "config.json") : json::object();
	const std::array<std::tuple<const char*, const char*, const char*>, 4> keys{{
	    {"bos_token", "bos_token_id", "tokenizer.ggml.bos_token_id"},
	    {"eos_token", "eos_token_id", "tokenizer.ggml.eos_token_id"},
	    {"unk_token", "unk_token_id", "tokenizer.ggml.unknown_token_id"},
	    {"pad_token", "pad_token_id", "tokenizer.ggml.padding_token_id"},
	}};
	for (const auto& [token_key, id_key, gguf_key] : keys) {
		auto id = special_id(tokenizer_config, token_key, vocab);
		if (!id) id = config_id(config, id_key);
		if (id && *id >= 0 && static_cast<uint64_t>(*id) < vocab.tokens.size())
			md.emplace_back(gguf_key, GgufValue::uint32(static_cast<uint32_t>(*id)));
	}
	for (const auto& [hf_key, gguf_key] : {std::pair{"add_bos_token", "tokenizer.ggml.add_bos_token"},
	                                       std::pair{"add_eos_token", "tokenizer.ggml.add_eos_token"}})
		if (tokenizer_config.contains(hf_key) && tokenizer_config[hf_key].is_boolean())
			md.emplace_back(gguf_key, GgufValue::boolean(tokenizer_config[hf_key].get<bool>()));
}

void add_tokenizer(GgufMetadata& md, const fs::path& dir, uint64_t rows) {
	const auto path = dir / "tokenizer.json";
	const std::string where = path.string();
	if (!fs::exists(path))
		fail(dir.string(), "no tokenizer.json: GGUF holds the vocabulary, so weld needs the model's tokenizer.json");
	const json tokenizer = parse_json_file(path);
	if (!tokenizer.is_object() || !tokenizer.contains("model") || !tokenizer["model"].is_object())
		fail(where, "not a tokenizer.json (no model object)");
	const json& model = tokenizer["model"];
	if (model.value("type", "BPE") != "BPE")
		fail(where, fmt::format("tokenizer model '{}' cannot be written as GGUF (BPE can)",
		                        escape_for_message(model.value("type", ""))));
	const bool spm = model.value("byte_fallback", false) ||
	                 mentions(tokenizer.value("pre_tokenizer", json()), "Metaspace") ||
	                 mentions(tokenizer.value("decoder", json()), "Metaspace");
	Vocabulary vocab = read_vocabulary(tokenizer, spm, rows, where);
	md.emplace_back("tokenizer.ggml.model", GgufValue::string(spm ? "llama" : "gpt2"));
	if (!spm) md.emplace_back("tokenizer.ggml.pre", GgufValue::string(pre_tokenizer_name(tokenizer)));
	md.emplace_back("tokenizer.ggml.tokens", GgufValue::string_array(vocab.tokens));
	if (spm) {
		// SentencePiece merges by score: a piece's rank in the vocabulary (earlier merges first).
		std::vector<double> scores(vocab.tokens.size(), 0.0);
		for (size_t i = 0; i < scores.size(); i++)
			if (vocab.types[i] == kNormal) scores[i] = -static_cast<double>(i);
		md.emplace_back("tokenizer.ggml.scores", GgufValue::float32_array(std::move(scores)));
	}
	md.emplace_back("tokenizer.ggml.token_type", GgufValue::int32_array(vocab.types));
	if (!spm && model.contains("merges") && model["merges"].is_array()) {
		std::vector<std::string> merges;
		try {
			for (const auto& m : model["merges"])
				merges.push_back(merge_text(m));
		} catch (const Error& e) {
			fail(where, e.what());
		}
		md.emplace_back("tokenizer.ggml.merges", GgufValue::string_array(std::move(merges)));
	}
	add_special_tokens(md, dir, vocab);
	if (auto chat_template = read_chat_template(dir))
		md.emplace_back("tokenizer.chat_template", GgufValue::string(*chat_template));
}

} // namespace

GgufMetadata llama_gguf_metadata(const GgufLlamaConfig& c, const fs::path& dir, const std::string& name,
                                 GgmlType file_type, uint64_t vocab_rows) {
	GgufMetadata md;
	const std::string& a = c.arch;
	auto u32 = [](int64_t v) { return GgufValue::uint32(static_cast<uint32_t>(v)); };
	md.emplace_back("general.architecture", GgufValue::string(a));
	md.emplace_back("general.name", GgufValue::string(name));
	md.emplace_back("general.file_type", GgufValue::uint32(file_type_of(file_type)));
	md.emplace_back("general.quantization_version", GgufValue::uint32(2));
	md.emplace_back(a + ".context_length", u32(c.context_length));
	md.emplace_back(a + ".embedding_length", u32(c.hidden));
	md.emplace_back(a + ".block_count", u32(c.layers));
	md.emplace_back(a + ".feed_forward_length", u32(c.intermediate));
	md.emplace_back(a + ".attention.head_count", u32(c.heads));
	md.emplace_back(a + ".attention.head_count_kv", u32(c.kv_heads));
	md.emplace_back(a + ".rope.freq_base", GgufValue::float32(static_cast<float>(c.rope_theta)));
	md.emplace_back(a + ".attention.layer_norm_rms_epsilon", GgufValue::float32(static_cast<float>(c.rms_eps)));
	md.emplace_back(a + ".rope.dimension_count", u32(c.head_dim));
	if (c.head_dim * c.heads != c.hidden) {
		md.emplace_back(a + ".attention.key_length", u32(c.head_dim));
		md.emplace_back(a + ".attention.value_length", u32(c.head_dim));
	}
	md.emplace_back(a + ".vocab_size", u32(static_cast<int64_t>(vocab_rows)));
	add_tokenizer(md, dir, vocab_rows);
	return md;
}

// --- GGUF → Hugging Face ---

namespace {

int64_t gguf_uint(const GgufHeader& header, const std::string& key, const std::string& label,
                  std::optional<int64_t> fallback = std::nullopt) {
	const auto* v = header.find(key);
	if (!v) {
		if (fallback) return *fallback;
		fail(label, fmt::format("metadata '{}' is missing", key));
	}
	if (v->is_array || v->ints.empty() || v->ints[0] <= 0)
		fail(label, fmt::format("metadata '{}' is not a positive integer", key));
	return v->ints[0];
}

double gguf_float(const GgufHeader& header, const std::string& key, double fallback) {
	const auto* v = header.find(key);
	if (!v || v->is_array || v->floats.empty()) return fallback;
	// float32 values print as the shortest decimal that reads back the same (1e-05, not 9.99e-06).
	return std::stod(fmt::format("{}", static_cast<float>(v->floats[0])));
}

const GgufValue* gguf_array(const GgufHeader& header, const std::string& key, GgufType element) {
	const auto* v = header.find(key);
	return v && v->is_array && v->element == element ? v : nullptr;
}

std::optional<std::string> gguf_string(const GgufHeader& header, const std::string& key) {
	const auto* v = header.find(key);
	if (!v || v->is_array || v->element != GgufType::STRING) return std::nullopt;
	return v->strings[0];
}

} // namespace

GgufLlamaConfig llama_config_from_gguf(const GgufHeader& header, const std::string& label) {
	GgufLlamaConfig c;
	c.arch = gguf_string(header, "general.architecture").value_or("");
	if (c.arch == "llama")
		c.hf_architecture = "LlamaForCausalLM";
	else if (c.arch == "qwen2")
		c.hf_architecture = "Qwen2ForCausalLM";
	else
		fail(label,
		     fmt::format("GGUF architecture '{}' is not supported (llama and qwen2 are)", escape_for_message(c.arch)));
	const std::string& a = c.arch;
	c.layers = gguf_uint(header, a + ".block_count", label);
	c.hidden = gguf_uint(header, a + ".embedding_length", label);
	c.intermediate = gguf_uint(header, a + ".feed_forward_length", label);
	c.heads = gguf_uint(header, a + ".attention.head_count", label);
	c.kv_heads = gguf_uint(header, a + ".attention.head_count_kv", label, c.heads);
	c.head_dim = gguf_uint(header, a + ".attention.key_length", label,
	                       gguf_uint(header, a + ".rope.dimension_count", label, c.hidden / c.heads));
	c.context_length = gguf_uint(header, a + ".context_length", label, 2048);
	c.rope_theta = gguf_float(header, a + ".rope.freq_base", 10000);
	c.rms_eps = gguf_float(header, a + ".attention.layer_norm_rms_epsilon", 1e-6);
	if (c.head_dim % 2 != 0) fail(label, fmt::format("head dimension {} is odd", c.head_dim));
	return c;
}

std::string hf_config_json(const GgufLlamaConfig& c, const GgufHeader& header, DType dtype, bool tied,
                           uint64_t vocab_rows) {
	ordered_json config;
	config["architectures"] = {c.hf_architecture};
	config["model_type"] = c.arch;
	config["hidden_act"] = "silu";
	config["hidden_size"] = c.hidden;
	config["intermediate_size"] = c.intermediate;
	config["num_hidden_layers"] = c.layers;
	config["num_attention_heads"] = c.heads;
	config["num_key_value_heads"] = c.kv_heads;
	if (c.head_dim * c.heads != c.hidden) config["head_dim"] = c.head_dim;
	config["max_position_embeddings"] = c.context_length;
	config["rms_norm_eps"] = c.rms_eps;
	config["rope_theta"] = c.rope_theta;
	config["rope_scaling"] = nullptr;
	config["vocab_size"] = vocab_rows;
	config["tie_word_embeddings"] = tied;
	config["torch_dtype"] = std::string(dtype_torch_name(dtype));
	for (const auto& [gguf_key, hf_key] : {std::pair{"tokenizer.ggml.bos_token_id", "bos_token_id"},
	                                       std::pair{"tokenizer.ggml.eos_token_id", "eos_token_id"}})
		if (const auto* v = header.find(gguf_key); v && !v->is_array && !v->ints.empty()) config[hf_key] = v->ints[0];
	return config.dump(2) + "\n";
}

namespace {

std::string find_pre_regex(const std::string& pre) {
	for (const auto& [name, regex] : kPreTokenizers)
		if (name == pre) return std::string(regex);
	return "";
}

ordered_json byte_level_tokenizer_json(const GgufHeader& header, const std::vector<std::string>& tokens,
                                       const std::vector<int64_t>& types) {
	ordered_json added = ordered_json::array();
	ordered_json vocab = ordered_json::object();
	for (size_t i = 0; i < tokens.size(); i++) {
		if (types[i] == kUnused) continue;
		vocab[tokens[i]] = i;
		if (types[i] == kControl || types[i] == kUserDefined)
			added.push_back({{"id", i},
			                 {"content", tokens[i]},
			                 {"single_word", false},
			                 {"lstrip", false},
			                 {"rstrip", false},
			                 {"normalized", types[i] != kControl},
			                 {"special", types[i] == kControl}});
	}
	ordered_json merges = ordered_json::array();
	if (const auto* m = gguf_array(header, "tokenizer.ggml.merges", GgufType::STRING))
		for (const auto& merge : m->strings)
			merges.push_back(merge);
	const auto regex = find_pre_regex(gguf_string(header, "tokenizer.ggml.pre").value_or(""));
	const ordered_json byte_level = {
	    {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", regex.empty()}};
	ordered_json pre = byte_level;
	if (!regex.empty())
		pre = {{"type", "Sequence"},
		       {"pretokenizers",
		        {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
		         byte_level}}};
	ordered_json t;
	t["version"] = "1.0";
	t["truncation"] = nullptr;
	t["padding"] = nullptr;
	t["added_tokens"] = added;
	t["normalizer"] = nullptr;
	t["pre_tokenizer"] = pre;
	t["post_processor"] = byte_level;
	t["decoder"] = byte_level;
	t["model"] = {{"type", "BPE"},
	              {"dropout", nullptr},
	              {"unk_token", nullptr},
	              {"continuing_subword_prefix", nullptr},
	              {"end_of_word_suffix", nullptr},
	              {"fuse_unk", false},
	              {"byte_fallback", false},
	              {"ignore_merges", false},
	              {"vocab", vocab},
	              {"merges", merges}};
	return t;
}

} // namespace

std::vector<std::string> write_hf_tokenizer(const GgufHeader& header, const fs::path& dir) {
	const auto* tokens = gguf_array(header, "tokenizer.ggml.tokens", GgufType::STRING);
	if (!tokens) return {};
	std::vector<int64_t> types(tokens->strings.size(), kNormal);
	if (const auto* t = gguf_array(header, "tokenizer.ggml.token_type", GgufType::INT32);
	    t && t->ints.size() == types.size())
		types = t->ints;
	ordered_json config;
	const std::array<std::pair<const char*, const char*>, 4> specials{{
	    {"tokenizer.ggml.bos_token_id", "bos_token"},
	    {"tokenizer.ggml.eos_token_id", "eos_token"},
	    {"tokenizer.ggml.unknown_token_id", "unk_token"},
	    {"tokenizer.ggml.padding_token_id", "pad_token"},
	}};
	for (const auto& [gguf_key, hf_key] : specials)
		if (const auto* v = header.find(gguf_key); v && !v->is_array && !v->ints.empty() && v->ints[0] >= 0 &&
		                                           static_cast<size_t>(v->ints[0]) < tokens->strings.size())
			config[hf_key] = tokens->strings[static_cast<size_t>(v->ints[0])];
	for (const auto& [gguf_key, hf_key] : {std::pair{"tokenizer.ggml.add_bos_token", "add_bos_token"},
	                                       std::pair{"tokenizer.ggml.add_eos_token", "add_eos_token"}})
		if (const auto* v = header.find(gguf_key); v && !v->is_array && v->element == GgufType::BOOL)
			config[hf_key] = v->ints[0] != 0;
	if (auto chat_template = gguf_string(header, "tokenizer.chat_template")) config["chat_template"] = *chat_template;
	std::vector<std::string> written;
	if (gguf_string(header, "tokenizer.ggml.model") == "gpt2") {
		write_text_file(dir / "tokenizer.json",
		                byte_level_tokenizer_json(header, tokens->strings, types).dump(2) + "\n");
		written.push_back("tokenizer.json");
		config["tokenizer_class"] = "PreTrainedTokenizerFast";
	}
	write_text_file(dir / "tokenizer_config.json", config.dump(2) + "\n");
	written.push_back("tokenizer_config.json");
	return written;
}

} // namespace weld
