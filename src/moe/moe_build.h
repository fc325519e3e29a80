// weld moe: mergekit-moe (mergekit/scripts/moe.py) on weld's reader and writer. The mixture keeps
// the base model's embeddings, attention and norms; each expert model's MLP becomes one routed
// expert of every layer, and the routers' rows come from the gate mode (moe_config.h).
//
// Output architectures as mergekit chooses them: `architecture:` (a name prefix) narrows the
// candidates Mixtral, DeepSeek MoE, Qwen MoE, Qwen3 MoE to those that take the models and shared
// experts, and Mixtral wins when it is among them. weld writes Mixtral (MixtralForCausalLM:
// block_sparse_moe.gate, block_sparse_moe.experts.N.w1/w2/w3, the layout transformers 4.x loads)
// and Qwen MoE (Qwen2MoeForCausalLM: mlp.gate, mlp.experts.N.*_proj, mlp.shared_expert.*,
// mlp.shared_expert_gate); a choice of DeepSeek MoE or Qwen3 MoE is an error saying so.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace weld::moe {

enum class OutputArchitecture { Mixtral, DeepseekMoe, QwenMoe, Qwen3Moe };
std::string architecture_name(OutputArchitecture architecture);

struct MoeOptions {
	std::filesystem::path config_path;
	std::filesystem::path out;
	bool force = false;
	bool allow_all_same = false; // --i-understand-this-is-not-useful-without-training
	uint64_t seed = 0;           // random gate modes and noise_scale
	uint64_t max_shard_bytes = 5'000'000'000;
};

// For the hidden gate modes: the residual stream of the base model (its folder) entering each
// decoder layer (the embeddings for layer 0), for one prompt's token ids, at its last token or
// (average) the mean over its tokens: num_hidden_layers × hidden_size floats, layer by layer.
using PromptStates = std::function<std::vector<float>(const std::filesystem::path& base_model,
                                                      const std::vector<int64_t>& ids, bool average)>;

struct MoeSummary {
	OutputArchitecture architecture = OutputArchitecture::Mixtral;
	size_t tensors = 0;
	uint64_t bytes = 0;
	std::vector<std::string> warnings;
};

// Builds the mixture the config describes into options.out, all or nothing. prompt_states must
// be given for the hidden gate modes (weld-torch gives it). Throws weld::Error.
MoeSummary build_moe(const MoeOptions& options, const PromptStates& prompt_states);

} // namespace weld::moe
