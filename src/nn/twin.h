// The runtime of a Twin-Merging folder (Lu et al. 2024, "Twin-Merging: Dynamic Integration of
// Modular Expertise in Model Merging"; the authors' code is LZY-the-boys/Twin-Merging).
//
// A twin folder is an ordinary Hugging Face model folder holding the SHARED model θ_0 + τ_s
// (config.json, model.safetensors, tokenizer files: any other tool sees a plain model), plus
//   - twin.json: {"format": "weld-twin", "version": 1, "experts": K, "expert_names": [...],
//     "ranks": {tensor: r, ...} (r = 0: a 1-D tensor kept whole), "router_layers": [H, 2H, 2H, K],
//     "pooling": "mean of the final hidden state over the prompt", and the settings it was built with};
//   - twin.safetensors (float32): per expert i and tensor n of rank r > 0, `<n>.twin<i>.u` [rows, r]
//     = U_r diag(S_r) and `<n>.twin<i>.v` [r, cols] = V_rᵀ, so that e_i,n = u v; for r = 0
//     `<n>.twin<i>.delta` (the tensor's shape); the router's `router.<l>.weight` [out, in] and
//     `router.<l>.bias` [out].
// For an input x, w(x) = softmax(router(f(x))), with f(x) the mean over x's tokens of the shared
// model's last decoder layer output (before the final norm), and the model that runs x is
// θ(x) = θ_0 + τ_s + Σ_i w_i(x) e_i.
//
// Includes ATen: only the runtime's own files and their tests include it.
#pragma once

#include "nn/llama.h"

#include <filesystem>
#include <string>
#include <vector>

namespace weld::nn {

// Whether dir holds a twin.json (it is then a twin folder; TwinModel::load checks the rest).
bool is_twin_folder(const std::filesystem::path& dir);

// The router MLP: Linear → LeakyReLU(0.01) → Linear → LeakyReLU(0.01) → ... → Linear. The
// authors' router also has BatchNorm and Dropout; weld leaves them out, so that routing is
// deterministic and does not depend on what else is in the batch.
struct TwinRouter {
	std::vector<at::Tensor> weights; // [out, in] per layer
	std::vector<at::Tensor> biases;  // [out]
	// features [N, in of layer 0] -> logits [N, out of the last layer], in the features' dtype.
	at::Tensor forward(const at::Tensor& features) const;
};

// f(x) for each sequence (none empty): the mean over its tokens of the model's last decoder layer
// output, before the final norm, as float32 [N, hidden]; batches of up to 64 sequences, right-padded.
at::Tensor mean_final_hidden(const LlamaModel& model, const std::vector<std::vector<int64_t>>& sequences);

class TwinModel {
public:
	// Reads a twin folder: the shared model in `dtype`, the exclusive factors and the router.
	// A malformed twin.json, or a missing or misshapen tensor of twin.safetensors, is a weld::Error
	// naming the file and the tensor.
	static TwinModel load(const std::filesystem::path& dir, at::ScalarType dtype = at::kFloat);

	size_t experts() const { return expert_names_.size(); }
	const std::vector<std::string>& expert_names() const { return expert_names_; }
	const LlamaConfig& config() const { return shared_.config(); }
	// θ_0 + τ_s: the model the folder holds.
	const LlamaModel& shared() const { return shared_; }
	const TwinRouter& router() const { return router_; }

	// w(x) for one sequence: float32 [K], summing to 1.
	at::Tensor route(const std::vector<int64_t>& ids) const;
	// w(x) for each sequence: float32 [N, K].
	at::Tensor route(const std::vector<std::vector<int64_t>>& sequences) const;
	// Sets the merged model's weights to θ_0 + τ_s + Σ_i weights[i] e_i and returns it; valid until
	// the next call. weights: [K].
	const LlamaModel& model_for(const at::Tensor& weights);

private:
	TwinModel(LlamaModel shared, LlamaModel merged) : shared_(std::move(shared)), merged_(std::move(merged)) {}

	struct Factors {      // one tensor's exclusive parts, all experts side by side
		std::string name; // the model's tensor
		at::Tensor u, v;  // rank > 0: [rows, Σ r] and [Σ r, cols]; expert i owns r columns/rows
		at::Tensor delta; // rank 0: [K, numel]
		int64_t rank = 0;
	};
	LlamaModel shared_, merged_;
	std::vector<std::string> expert_names_;
	std::vector<Factors> factors_;
	TwinRouter router_;
	at::ScalarType compute_ = at::kFloat; // of the factors: float64 for a float64 model, else float32
	at::Tensor current_;                  // the weights merged_ holds, undefined before the first model_for
};

} // namespace weld::nn
