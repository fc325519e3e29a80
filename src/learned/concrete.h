// Concrete subspace learning (Tang et al. 2023, FusionBench's concrete_task_arithmetic and
// concrete_adamerging): one mask shared by every task, learned without labels. Each weight has a
// logit x (starting at 0); a step draws the relaxed-Bernoulli (Concrete) mask
//   m = σ((log u − log(1 − u) + x) / T),  u ~ U(0, 1),  temperature T,
// rescales it per tensor, m̂ = m / mean(m), and merges θ = θ_base + λ Σ_k m̂ ⊙ τ_k (task
// arithmetic's λ); Adam lowers the entropy of the merged model's greedy answers to unlabeled
// prompts through x. The result uses one more draw of the mask (as FusionBench, which evaluates a
// sampled mask), rescaled the same way. The adamerging variant then freezes that mask on every τ_k
// and learns AdaMerging's λ (layer-wise) over the masked task vectors, where the authors alternate
// the two levels at every step.
#pragma once

#include "learned/adamerging.h"

namespace weld::learned {

struct ConcreteOptions {
	double lambda = 0.3;      // task arithmetic's λ
	double temperature = 0.5; // the authors' T
	int64_t steps = 100;
	double lr = 1e-2;
	int64_t batch = 16; // prompts per step
	uint64_t seed = 0;  // the mask draws and the prompt order
	bool adamerging = false;
	AdaMergingOptions ada; // the adamerging variant's second stage
};

struct ConcreteStep {
	int64_t step = 0;
	double entropy = 0;
	double mean_keep = 0; // mean σ(x) over all weights
};

// One Concrete draw per tensor of tv.names(): logistic noise log u − log(1 − u), u uniform from the
// generator, tensor after tensor.
std::vector<at::Tensor> concrete_noise(TaskVectorModel& tv, at::Generator& generator);

// m̂ = m / mean(m) with m = σ((noise + logits) / T), per tensor.
at::Tensor rescaled_concrete_mask(const at::Tensor& logits, const at::Tensor& noise, double temperature);

// Learns the mask and leaves tv's model at the merged weights (tv's task vectors masked for the
// adamerging variant). Returns the fraction of weights whose final mask value is above 1/2.
double learn_concrete(TaskVectorModel& tv, const std::vector<std::vector<int64_t>>& prompts,
                      const ConcreteOptions& options, const std::function<void(const ConcreteStep&)>& on_step);

} // namespace weld::learned
