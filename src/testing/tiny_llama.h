// Tiny Llama-shaped models for tests and the built-in example: the real tensor names and a
// matching config.json, with random weights, so every code path of a real merge runs in
// milliseconds.
#pragma once

#include "io/dtype.h"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace weld {

struct TinyLlamaSpec {
	int layers = 2;
	int hidden = 16;
	int intermediate = 32;
	int vocab = 64;
	int heads = 2;
	int kv_heads = 1;
	bool tie_embeddings = false; // true: no lm_head.weight
	DType dtype = DType::F32;    // stored dtype
};

struct NamedTensor {
	std::string name;
	std::vector<uint64_t> shape;
	std::vector<float> values;
};

// model.embed_tokens.weight, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
// post_attention_layernorm, mlp.{gate,up,down}_proj}.weight, model.norm.weight, lm_head.weight.
std::vector<NamedTensor> make_tiny_llama(const TinyLlamaSpec& spec, uint64_t seed);
// A "fine-tune": every value plus scale * N(0,1)-like noise drawn from seed.
std::vector<NamedTensor> perturb(const std::vector<NamedTensor>& model, float scale, uint64_t seed);
// Writes config.json, tokenizer files and the weights in spec.dtype, sharded when the weights
// exceed max_shard_bytes.
void write_tiny_llama(const std::filesystem::path& dir, const TinyLlamaSpec& spec,
                      const std::vector<NamedTensor>& tensors, uint64_t max_shard_bytes = UINT64_MAX);

} // namespace weld
