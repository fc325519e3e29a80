// DAM, Defense-Aware Merging (Yang et al., ICLR 2025, "Mitigating the backdoor effect for
// multi-task model merging via safety-aware subspace"): Concrete subspace learning with two masks
// over the task vectors, learned in turn at every step on a small clean labeled set:
//   θ = θ_base + λ Σ_k m̂ ⊙ (1 − b) ⊙ τ_k,
// - the task-shared mask m = σ((L + x)/T), rescaled per tensor m̂ = m / mean(m), learned as
//   concrete learns its mask: Adam lowers the entropy of the merged model's greedy answers to the
//   clean prompts through x (b held fixed);
// - the backdoor-detection mask b = σ((L' + y)/T), y starting at `backdoor_init`: Adam lowers
//   CE(clean answers) − α · mean(b) through y (m̂ held fixed), so b grows (the task vectors are
//   taken off, back to the base) wherever the clean data does not need them (a backdoor's weights,
//   such as its trigger's embedding, which no clean prompt uses) and stays near 0 where removing
//   them would raise the clean loss.
// L, L' are logistic noise, log u − log(1 − u), drawn anew each step. The result uses the noise-free
// masks σ(x/T), σ(y/T) (the distributions' medians), or with sample_final one more draw of each.
// weld's own formulation: the authors' code learns one mask against an adversarial input
// perturbation (a synthesized trigger); see docs/methods.md.
#pragma once

#include "learned/task_vector_model.h"
#include "nn/train.h"

namespace weld::learned {

struct DamOptions {
	double lambda = 0.3;      // task arithmetic's λ
	double temperature = 0.5; // T of both masks
	int64_t steps = 100;
	double lr = 1e-2;         // Adam, the task-shared mask (concrete's)
	double backdoor_lr = 0.1; // Adam, the backdoor-detection mask
	int64_t batch = 16;       // clean examples per step
	double alpha = 1;         // weight of the removal reward in the backdoor mask's loss (nats)
	double backdoor_init = -3;
	bool sample_final = false;
	uint64_t seed = 0; // the mask draws and the example order
};

struct DamStep {
	int64_t step = 0;
	double entropy = 0; // the shared mask's loss
	double loss = 0;    // the clean cross-entropy, in the backdoor mask's step
	double removed = 0; // mean σ(y/T) over all weights
};

struct DamResult {
	std::vector<at::Tensor> shared_logits, backdoor_logits; // x and y, per tensor of tv.names()
	std::vector<at::Tensor> coefficients;                   // the final m̂ ⊙ (1 − b), per tensor
	double kept = 0;                                        // fraction of weights whose final shared mask is above 1/2
	double removed = 0;                                     // fraction whose final backdoor mask is above 1/2
};

// Learns both masks and leaves tv's model at the merged weights. The prompts and the examples are
// the same clean data (its prompts for the entropy, prompt + answer for the cross-entropy).
DamResult learn_dam(TaskVectorModel& tv, const std::vector<std::vector<int64_t>>& prompts,
                    const std::vector<nn::TrainingSequence>& examples, const DamOptions& options,
                    const std::function<void(const DamStep&)>& on_step);

// θ = θ_base + λ M ⊙ Σ_k τ_k for the per-weight coefficients M (one tensor per tv.names(), each of
// its tensor's shape; otherwise an error naming `source`): the merge of learn_dam's coefficients,
// and dam's rerun from the masks file its output holds.
void apply_dam_coefficients(TaskVectorModel& tv, const std::vector<at::Tensor>& coefficients, double lambda,
                            const std::string& source);

} // namespace weld::learned
