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

#include <cstdint>
#include <string>
#include <vector>

namespace weld {

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

} // namespace weld
