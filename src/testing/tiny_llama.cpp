#include "testing/tiny_llama.h"

#include "io/safetensors.h"
#include "tensor/convert.h"
#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

namespace weld {
namespace {

// splitmix64: tiny, fast, and identical on every platform, unlike std:: distributions.
class Random {
public:
	explicit Random(uint64_t seed) : state_(seed) {}
	uint64_t next() {
		uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
		z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
		return z ^ (z >> 31);
	}
	// Uniform in [0, 1) with 24 random bits, exact in float.
	float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }
	// Sum of four uniforms, centred and scaled to unit variance: normal-like, only + and *.
	float normalish() { return (uniform() + uniform() + uniform() + uniform() - 2.0f) * 1.7320508f; }

private:
	uint64_t state_;
};

NamedTensor matrix(std::string name, uint64_t rows, uint64_t cols, float scale, Random& rng) {
	NamedTensor t{std::move(name), {rows, cols}, std::vector<float>(rows * cols)};
	for (float& v : t.values)
		v = (rng.uniform() - 0.5f) * scale;
	return t;
}

NamedTensor norm(std::string name, uint64_t size, Random& rng) {
	NamedTensor t{std::move(name), {size}, std::vector<float>(size)};
	for (float& v : t.values)
		v = 1.0f + (rng.uniform() - 0.5f) * 0.1f;
	return t;
}

void check_spec(const TinyLlamaSpec& s) {
	if (s.layers < 0 || s.hidden <= 0 || s.intermediate <= 0 || s.vocab <= 0 || s.heads <= 0 || s.kv_heads <= 0 ||
	    s.hidden % s.heads != 0 || s.heads % s.kv_heads != 0)
		throw Error(fmt::format("tiny llama: inconsistent spec (hidden {}, heads {}, kv_heads {})", s.hidden, s.heads,
		                        s.kv_heads));
}

void write_text(const std::filesystem::path& path, const std::string& text) {
	std::ofstream out(path, std::ios::binary | std::ios::trunc);
	out << text;
	out.close();
	if (!out) throw Error(fmt::format("{}: cannot write", path.string()));
}

std::string config_json(const TinyLlamaSpec& s) {
	nlohmann::ordered_json j;
	j["architectures"] = {"LlamaForCausalLM"};
	j["model_type"] = "llama";
	j["hidden_size"] = s.hidden;
	j["intermediate_size"] = s.intermediate;
	j["num_attention_heads"] = s.heads;
	j["num_key_value_heads"] = s.kv_heads;
	j["num_hidden_layers"] = s.layers;
	j["vocab_size"] = s.vocab;
	j["max_position_embeddings"] = 128;
	j["rms_norm_eps"] = 1e-5;
	j["rope_theta"] = 10000.0;
	j["tie_word_embeddings"] = s.tie_embeddings;
	j["torch_dtype"] = dtype_torch_name(s.dtype);
	j["bos_token_id"] = 1;
	j["eos_token_id"] = 2;
	j["hidden_act"] = "silu";
	return j.dump(2) + "\n";
}

void write_tokenizer_files(const std::filesystem::path& dir) {
	nlohmann::ordered_json config;
	config["tokenizer_class"] = "LlamaTokenizer";
	config["bos_token"] = "<s>";
	config["eos_token"] = "</s>";
	config["unk_token"] = "<unk>";
	config["model_max_length"] = 128;
	config["add_bos_token"] = true;
	config["add_eos_token"] = false;
	write_text(dir / "tokenizer_config.json", config.dump(2) + "\n");
	nlohmann::ordered_json special = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}};
	write_text(dir / "special_tokens_map.json", special.dump(2) + "\n");
}

} // namespace

std::vector<NamedTensor> make_tiny_llama(const TinyLlamaSpec& spec, uint64_t seed) {
	check_spec(spec);
	Random rng(seed);
	const auto h = static_cast<uint64_t>(spec.hidden);
	const auto inter = static_cast<uint64_t>(spec.intermediate);
	const auto vocab = static_cast<uint64_t>(spec.vocab);
	const uint64_t kv = static_cast<uint64_t>(spec.kv_heads) * (h / static_cast<uint64_t>(spec.heads));
	const float scale = 1.0f / std::sqrt(static_cast<float>(h));

	std::vector<NamedTensor> out;
	out.push_back(matrix("model.embed_tokens.weight", vocab, h, scale, rng));
	for (int i = 0; i < spec.layers; ++i) {
		const std::string p = fmt::format("model.layers.{}.", i);
		out.push_back(norm(p + "input_layernorm.weight", h, rng));
		out.push_back(matrix(p + "self_attn.q_proj.weight", h, h, scale, rng));
		out.push_back(matrix(p + "self_attn.k_proj.weight", kv, h, scale, rng));
		out.push_back(matrix(p + "self_attn.v_proj.weight", kv, h, scale, rng));
		out.push_back(matrix(p + "self_attn.o_proj.weight", h, h, scale, rng));
		out.push_back(norm(p + "post_attention_layernorm.weight", h, rng));
		out.push_back(matrix(p + "mlp.gate_proj.weight", inter, h, scale, rng));
		out.push_back(matrix(p + "mlp.up_proj.weight", inter, h, scale, rng));
		out.push_back(matrix(p + "mlp.down_proj.weight", h, inter, scale, rng));
	}
	out.push_back(norm("model.norm.weight", h, rng));
	if (!spec.tie_embeddings) out.push_back(matrix("lm_head.weight", vocab, h, scale, rng));
	return out;
}

std::vector<NamedTensor> perturb(const std::vector<NamedTensor>& model, float scale, uint64_t seed) {
	Random rng(seed);
	std::vector<NamedTensor> out = model;
	for (auto& t : out)
		for (float& v : t.values)
			v += scale * rng.normalish();
	return out;
}

void write_tiny_llama(const std::filesystem::path& dir, const TinyLlamaSpec& spec,
                      const std::vector<NamedTensor>& tensors, uint64_t max_shard_bytes) {
	check_spec(spec);
	if (!dtype_is_arithmetic(spec.dtype))
		throw Error(fmt::format("tiny llama: cannot store weights as {}", dtype_safetensors_name(spec.dtype)));
	std::filesystem::create_directories(dir);
	write_text(dir / "config.json", config_json(spec));
	write_tokenizer_files(dir);

	std::vector<OutputTensorSpec> specs;
	for (const auto& t : tensors) {
		specs.push_back({t.name, spec.dtype, t.shape});
		if (t.values.size() != specs.back().nbytes() / dtype_size(spec.dtype))
			throw Error(fmt::format("tiny llama: tensor '{}' has {} values for its shape", t.name, t.values.size()));
	}
	SafetensorsWriter writer(dir, specs, max_shard_bytes);
	std::vector<uint8_t> bytes;
	for (size_t i = 0; i < tensors.size(); ++i) {
		bytes.resize(specs[i].nbytes());
		convert_from_f32(spec.dtype, tensors[i].values.data(), bytes.data(), tensors[i].values.size());
		writer.write(i, bytes);
	}
	writer.finish();
}

} // namespace weld
