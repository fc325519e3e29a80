// A Llama-family causal language model (Llama, Mistral, Qwen2, and the mixtures of experts
// Mixtral and Qwen2-MoE) in libtorch tensors: loaded
// from a Hugging Face folder, run forward (logits) and backward (gradients with respect to
// the weights), and written back in the folder's own layout.
//
// The equations are those of transformers' eager Llama implementation: RMSNorm in float32,
// rotary embeddings with the rotate_half convention, grouped-query attention with a causal
// mask (and Mistral's sliding window), softmax in float32, SwiGLU MLP. Mixture-of-experts
// layers route each token as transformers' Mixtral and Qwen2-MoE blocks do: softmax over the
// router's logits in float32, the top experts_per_token experts, their weights renormalized
// (Mixtral always, Qwen2-MoE with norm_topk_prob), and Qwen2-MoE's shared expert added with
// its sigmoid gate.
//
// This header includes ATen: only the runtime's own files (and their tests) include it, so
// that the rest of weld builds without libtorch.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weld::nn {

struct LlamaConfig {
	// LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, MixtralForCausalLM or Qwen2MoeForCausalLM
	std::string architecture;
	int64_t hidden_size = 0;
	int64_t intermediate_size = 0;
	int64_t num_hidden_layers = 0;
	int64_t num_attention_heads = 0;
	int64_t num_key_value_heads = 0; // default: num_attention_heads
	int64_t head_dim = 0;            // default: hidden_size / num_attention_heads
	int64_t vocab_size = 0;
	int64_t max_position_embeddings = 0; // 0 when absent: no limit is checked
	double rms_norm_eps = 1e-6;
	double rope_theta = 10000.0;
	bool tie_word_embeddings = false;
	std::optional<int64_t> sliding_window; // Mistral (and Qwen2 with use_sliding_window)

	// Mixture of experts; num_experts 0: a dense model.
	int64_t num_experts = 0;                     // Mixtral's num_local_experts, Qwen2-MoE's num_experts
	int64_t experts_per_token = 0;               // num_experts_per_tok
	int64_t moe_intermediate_size = 0;           // of each routed expert (Mixtral: intermediate_size)
	int64_t shared_expert_intermediate_size = 0; // Qwen2-MoE's shared expert; 0: none
	bool norm_topk_prob = true;                  // renormalize the top-k routing weights
	int64_t decoder_sparse_step = 1;             // Qwen2-MoE: layer i routes when (i + 1) % step == 0
	std::vector<int64_t> mlp_only_layers;        // Qwen2-MoE: dense layers whatever the step

	bool sparse_layer(int64_t layer) const;
};

// Parses config.json text; `label` names the file in errors. An architecture other than the
// three above, rope_scaling, or a hidden_act other than silu is an error naming the value.
LlamaConfig parse_llama_config(std::string_view json_text, const std::string& label);

class LlamaModel {
public:
	// Reads config.json and the weights of a Hugging Face folder into tensors of `dtype`
	// (float32 or bfloat16 for use; float64 for exact checks). Missing or misshapen tensors
	// are errors naming the folder and the tensor.
	static LlamaModel load(const std::filesystem::path& dir, at::ScalarType dtype = at::kFloat);

	// A new model for the config.json text (label names it in errors), in float32: weights drawn
	// from N(0, initializer_range²) (initializer_range from the config, default 0.02), biases 0 and
	// norms 1, as transformers initializes Llama; a function of (config, seed) alone. save() writes
	// the config text and one model.safetensors in float32.
	static LlamaModel create(const std::string& config_json, const std::string& label, uint64_t seed);

	const LlamaConfig& config() const { return config_; }
	at::ScalarType dtype() const { return dtype_; }

	// input_ids: int64 [batch, seq] (or [seq]). Returns logits [batch, seq, vocab] in the model's
	// dtype. Sequences in a batch share positions 0..seq-1; right padding does not change the
	// logits of earlier tokens. With `hidden`, it also receives the residual stream after each
	// decoder layer ([batch, seq, hidden] each, num_hidden_layers of them; the last before the
	// final norm), as transformers' output_hidden_states less the embeddings.
	at::Tensor forward(const at::Tensor& input_ids, std::vector<at::Tensor>* hidden = nullptr) const;

	// Incremental decoding: the keys and values (after RoPE) of every layer for the positions
	// seen so far, so that each new token costs one position instead of the whole sequence.
	struct KvCache {
		std::vector<at::Tensor> keys, values; // per layer [batch, kv_heads, positions, head_dim]
		int64_t positions = 0;
	};
	// forward() of input_ids [batch, new] at positions cache.positions.., attending to the cached
	// keys/values and its own; appends its keys/values to the cache. The logits [batch, new,
	// vocab] equal forward()'s on the whole sequence at those positions (sliding window included).
	at::Tensor forward_cached(const at::Tensor& input_ids, KvCache& cache) const;

	// The weights by their Hugging Face names (a tied lm_head is not listed: it is the embedding).
	std::map<std::string, at::Tensor>& parameters() { return params_; }
	const std::map<std::string, at::Tensor>& parameters() const { return params_; }
	const at::Tensor& parameter(const std::string& name) const;
	// Turns gradient tracking on or off for every weight.
	void set_requires_grad(bool on);
	// Replaces weights by name (same shapes; they may be non-leaf tensors, so that gradients flow
	// into whatever computed them, as AdaMerging's coefficients). Unknown names and shapes throw.
	void replace_parameters(const std::map<std::string, at::Tensor>& values);

	// Called by forward() for every linear map y = x Wᵀ (+ b) with the weight's name (lm_head, or
	// the embedding when tied), its input x [batch, seq, in] and output y [batch, seq, out]:
	// where weld stats reads activations. Empty: none.
	using LinearObserver =
	    std::function<void(const std::string& weight_name, const at::Tensor& input, const at::Tensor& output)>;
	void set_linear_observer(LinearObserver observer) { observer_ = std::move(observer); }

	// Writes config.json (as read), the tokenizer files and the weights with the source's tensor
	// names, order, dtypes and shard split (model.safetensors, or model-0000K-of-0000N shards
	// with their index). The folder must not exist yet or be empty.
	void save(const std::filesystem::path& dir) const;

private:
	struct Linear {
		at::Tensor weight, bias; // bias undefined when absent
		std::string name;        // the weight's
	};
	struct Mlp { // SwiGLU: down(silu(gate x) * up x)
		Linear gate, up, down;
	};
	struct SparseMoe { // Mixtral's block_sparse_moe, Qwen2-MoE's sparse mlp
		Linear router;
		std::vector<Mlp> experts;
		std::optional<Mlp> shared; // Qwen2-MoE, added as sigmoid(shared_gate x) * shared(x)
		Linear shared_gate;
	};
	struct Layer {
		at::Tensor input_norm, post_norm;
		Linear q, k, v, o;
		Mlp mlp; // dense layers
		std::optional<SparseMoe> moe;
	};
	struct SourceTensor { // how the source folder stored each tensor, for save()
		std::string name;
		std::string file;
		std::string dtype; // safetensors name: F32, BF16, F16
	};

	LlamaConfig config_;
	at::ScalarType dtype_ = at::kFloat;
	std::filesystem::path source_dir_; // empty for a created model
	std::string created_config_;       // config.json of a created model
	std::vector<SourceTensor> source_tensors_;
	std::map<std::string, at::Tensor> params_;
	at::Tensor embed_, final_norm_, lm_head_;
	std::vector<Layer> layers_;
	LinearObserver observer_;

	void bind_parameters();
	at::Tensor apply(const Linear& linear, const at::Tensor& x) const;
	at::Tensor feed_forward(const Mlp& mlp, const at::Tensor& x) const;
	at::Tensor sparse_moe(const SparseMoe& moe, const at::Tensor& x) const;
	at::Tensor attention(const Layer& layer, const at::Tensor& x, const at::Tensor& rope_cos,
	                     const at::Tensor& rope_sin, const at::Tensor& mask, at::Tensor* cached_keys = nullptr,
	                     at::Tensor* cached_values = nullptr) const;
	at::Tensor run(const at::Tensor& input_ids, std::vector<at::Tensor>* hidden, KvCache* cache) const;
};

// Token id sequences as one int64 [count, longest] batch (at least min_length wide), right-padded
// with 0: where forward() gives each sequence's logits as if it ran alone.
at::Tensor right_padded_ids(const std::vector<std::vector<int64_t>>& sequences, size_t min_length = 1);

// Log-likelihood of each token given the ones before it: logits [batch, seq, vocab] and
// input_ids [batch, seq] -> float32 (float64 for a float64
// model) [batch, seq - 1], entry t being log p(ids[t+1] | ids[..t]).
at::Tensor token_log_likelihoods(const at::Tensor& logits, const at::Tensor& input_ids);

} // namespace weld::nn
