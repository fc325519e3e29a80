// The runtime side of merges that learn their coefficients from data (AdaMerging, FW-Merging):
// a base and its fine-tunes held as task vectors τ_k = θ_k - θ_base, a model whose weights are
// θ(c) = θ_base + Σ_k c[k][group(n)] τ_k,n for a coefficient tensor c, greedy answers to
// unlabeled prompts, and the entropy of the model's predictions on them, differentiable in c.
//
// Everything is held in memory (base, K task vectors, the merged model): K + 2 model copies.
// Includes ATen: only the learned merges' own files and their tests include it.
#pragma once

#include "nn/llama.h"

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace weld::learned {

class TaskVectorModel {
public:
	// Loads base and experts (the same architecture and tensor shapes; an expert that differs is an
	// error naming it) in `dtype`.
	TaskVectorModel(const std::filesystem::path& base, const std::vector<std::filesystem::path>& experts,
	                at::ScalarType dtype);

	size_t experts() const { return deltas_.size(); }
	// The weights' names, sorted: group g of layer-wise coefficients is tensor names()[g].
	const std::vector<std::string>& names() const { return names_; }
	const at::Tensor& delta(size_t expert, size_t tensor) const { return deltas_[expert][tensor]; }
	const at::Tensor& base(size_t tensor) const { return base_[tensor]; }

	// Sets the model's weights to θ(c); c is [experts, 1] (one coefficient per task) or
	// [experts, names().size()] (one per task and tensor). Gradients flow into c.
	void apply(const at::Tensor& coefficients);
	// Sets the model's weights to merged(n) for every tensor n (names()[n]); gradients flow into
	// whatever merged computes from (masks, chunked coefficients).
	void apply_tensors(const std::function<at::Tensor(size_t tensor)>& merged);
	// τ_k of one tensor multiplied in place (a mask applied once, for the methods after it).
	void scale_delta(size_t expert, size_t tensor, const at::Tensor& factor) { deltas_[expert][tensor].mul_(factor); }
	nn::LlamaModel& model() { return model_; }

private:
	nn::LlamaModel model_;
	std::vector<std::string> names_;
	std::vector<at::Tensor> base_;
	std::vector<std::vector<at::Tensor>> deltas_;
};

// A prompt followed by the model's greedy answer; the entropy is taken where the answer's tokens
// are predicted (positions answer_from - 1 .. ids.size() - 2).
struct Answered {
	std::vector<int64_t> ids;
	size_t answer_from = 0;
};

// Greedy answers of the model (no gradient) to each prompt, in batches: up to max_new tokens,
// ending after a newline or at EOS.
std::vector<Answered> greedy_answers(const nn::LlamaModel& model, const std::vector<std::vector<int64_t>>& prompts,
                                     size_t max_new);

// Mean over the answers' tokens of the entropy H(p) = -Σ p log p of the model's next-token
// distribution, as a differentiable scalar.
at::Tensor mean_answer_entropy(const nn::LlamaModel& model, const std::vector<Answered>& answered);

// The prompts of a data file as token ids (BOS + bytes): prompt/answer JSONL (answers ignored:
// the learned merges see no labels) or text lines. Throws weld::Error naming the file when it
// holds none, or when the model has a tokenizer of its own.
std::vector<std::vector<int64_t>> read_prompts(const std::filesystem::path& file, const nn::LlamaModel& model,
                                               const std::filesystem::path& model_dir);

} // namespace weld::learned
