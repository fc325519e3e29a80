// Function-preserving permutations of a Llama-family model's hidden units, the common currency of
// weld align (weight_matching, activation, pleas) and the zipit merge method.
//
// Every index vector is a gather: new unit i is the old unit perm[i]. What can be permuted without
// changing the function:
//   residual   the hidden size H: embedding columns, every RMSNorm weight, the columns of every
//              matrix that reads the residual stream (q/k/v/gate/up, lm_head) and the rows of every
//              matrix that writes it (o_proj, down_proj). RMSNorm commutes with a permutation.
//   mlp        per layer, the intermediate units: gate/up rows, down_proj columns.
//   kv_heads   per layer, the key/value heads: k/v rows (whole heads), each group's query heads
//              moving with it (q rows, o_proj columns, whole heads).
//   query_heads per layer and group, the query heads within the group (they share its key/value).
//   value_dims per layer and key/value head, the head_dim units of v (v rows, and the same columns
//              of o_proj in every query head of the group). Query/key dims are not permuted: RoPE
//              gives each frequency pair its own angle, so moving a pair changes the function.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace weld {

class ModelFolder;

struct LlamaShape {
	std::string architecture; // LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM
	int64_t layers = 0, hidden = 0, intermediate = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0;
	bool tied_embeddings = false;
	bool qkv_bias = false;
	int64_t group_size() const { return heads / kv_heads; }
};

struct LayerPermutation {
	std::vector<int64_t> mlp;                      // [intermediate]
	std::vector<int64_t> kv_heads;                 // [kv_heads]
	std::vector<std::vector<int64_t>> query_heads; // [kv_heads][group_size], within the (new) group
	std::vector<std::vector<int64_t>> value_dims;  // [kv_heads][head_dim], of the (new) kv head
};

struct ModelPermutation {
	std::vector<int64_t> residual; // [hidden]
	std::vector<LayerPermutation> layers;
};

// The identity of a shape.
ModelPermutation identity_permutation(const LlamaShape& shape);

// Throws weld::Error naming what is wrong when a vector has the wrong length or is not a
// permutation.
void check_permutation(const ModelPermutation& p, const LlamaShape& shape);

// A positive integer of config.json: `fallback` where the key is absent (if fallback > 0), else
// weld::Error naming `label` and the key; the same where it is not a positive integer.
int64_t config_positive(const nlohmann::json& config, const char* key, int64_t fallback, const std::string& label);

// The shape of a Llama, Mistral or Qwen2 model from its config.json (head_dim defaults to
// hidden_size / num_attention_heads, num_key_value_heads to num_attention_heads; qkv_bias is
// whether layer 0 has q_proj.bias). Throws weld::Error naming `label` and the key otherwise.
LlamaShape read_llama_shape(const ModelFolder& model, const std::string& label);

// Throws one weld::Error naming both models and the first field in which they differ.
void check_same_shape(const LlamaShape& a, const std::string& label_a, const LlamaShape& b, const std::string& label_b);

// Every tensor of a model as float32, by name.
using WeightMap = std::map<std::string, std::vector<float>>;

// Reads every tensor of `model` as float32, after checking that each tensor the shape implies
// exists with the shape config.json implies (throws weld::Error naming `label` and the tensor).
WeightMap read_weights(const ModelFolder& model, const LlamaShape& shape, const std::string& label);

// Applies p (checked first) to the weights as described above: every gather is exact, so the
// model computes the same function.
void permute_weights(WeightMap& w, const LlamaShape& shape, const ModelPermutation& p);

// Writes `w` as a model folder at `out`: every tensor of `like` in its dtype and order (from `w`
// where it has the name, else `like`'s bytes), with `like`'s config.json and tokenizer files,
// all or nothing. Throws weld::Error when `w` holds a tensor `like` lacks or of another size.
void write_weights(const ModelFolder& like, const WeightMap& w, const std::string& out, bool force,
                   uint64_t max_shard_bytes);

} // namespace weld
