// AdaMerging (Yang et al., ICLR 2024): task arithmetic whose coefficients λ, one per task
// (task-wise) or per task and tensor (layer-wise), are learned without labels by minimizing the
// entropy of the merged model's predictions on the test prompts. The gradient needs one backward
// pass: ∂H/∂λ_k^l = ⟨∇_{θ^l} H, τ_k^l⟩, which autograd computes through θ(λ) = θ_base + Σ λ τ.
// For a language model the entropy is taken where the model's own greedy answer to each prompt
// is predicted (the answer re-decoded with the current λ at every step).
#pragma once

#include "learned/task_vector_model.h"

#include <torch/optim/optimizer.h>

#include <functional>

namespace weld::learned {

struct AdaMergingOptions {
	bool layer_wise = true;
	int64_t steps = 100;
	double lr = 1e-3;         // Adam, as the paper
	double lambda_init = 0.3; // the paper's initial λ
	int64_t batch = 16;       // prompts per step, in an order shuffled anew each pass from seed
	uint64_t seed = 0;
	size_t max_new_tokens = 16; // longest greedy answer
};

// Which prompt the index-th draw takes: each pass over the n prompts in its own shuffled order.
class PromptOrder {
public:
	PromptOrder(size_t n, uint64_t seed);
	size_t operator()(uint64_t index) const;

private:
	size_t n_;
	uint64_t seed_;
	mutable uint64_t epoch_ = UINT64_MAX;
	mutable std::vector<size_t> order_;
};

struct AdaMergingStep {
	int64_t step = 0;
	double entropy = 0;
};

// One optimizer step on the entropy of the model's greedy answers to the prompts. set_model(false)
// puts tv's model at the current point without gradients, to decode the answers; set_model(true)
// puts it there again with gradients flowing into whatever the optimizer trains (coefficients,
// masks). Returns the entropy.
double entropy_step(TaskVectorModel& tv, torch::optim::Optimizer& optimizer,
                    const std::function<void(bool track)>& set_model, const std::vector<std::vector<int64_t>>& prompts,
                    size_t max_new_tokens);

// The prompts of the step-th batch of `batch` from an order shuffled anew each pass.
std::vector<std::vector<int64_t>> prompt_batch(const std::vector<std::vector<int64_t>>& prompts,
                                               const PromptOrder& order, int64_t step, int64_t batch);

// λ [experts, 1 or tensors], learned; tv's model is left at θ(λ).
at::Tensor learn_adamerging(TaskVectorModel& tv, const std::vector<std::vector<int64_t>>& prompts,
                            const AdaMergingOptions& options,
                            const std::function<void(const AdaMergingStep&)>& on_step);

} // namespace weld::learned
