// Expert Merging (Zhang et al. 2025, github Littleor/ExpertMerging): task arithmetic whose
// coefficients α_k^l = σ(r_k^l) (per expert k and tensor l, starting at lambda_init) are learned
// on unlabeled calibration prompts so that the merged model behaves like each expert on that
// expert's prompts. Each expert first answers its own prompts greedily (the authors' "fake
// labels"); on prompt + answer, the loss of a sample of expert t is
//   T² · CE(softmax(z_t / T), log_softmax(z / T))   (soft targets: the expert's logits; = KL + const)
//   + hidden_weight · mean over layers of MSE(h^l, h_t^l)   (residual stream after each layer)
// averaged over the sample's positions, plus regularization · Σ_k mean_l |α_k^l − lambda_init|.
// Expert Merging++ (variant plus) learns once with one coefficient per tensor, then gives each
// tensor chunks in proportion to its importance I_l ∝ Σ_k |α_k^l| · mean|τ_k^l| · size_l (about
// `chunks` per tensor on average, at least one), each chunk a contiguous piece of the flattened
// tensor with its own coefficient, and learns again from lambda_init.
#pragma once

#include "learned/adamerging.h"

namespace weld::learned {

struct ExpertMergingOptions {
	double lambda_init = 0.1;
	int64_t steps = 50;
	double lr = 0.1;    // Adam on the logits r
	int64_t batch = 16; // calibration samples per step
	uint64_t seed = 0;
	double temperature = 1;
	double hidden_weight = 1;
	double regularization = 5;
	bool plus = false;
	double chunks = 4; // plus: mean chunks per tensor
	size_t max_new_tokens = 16;
};

struct ExpertMergingStep {
	int stage = 1;
	int64_t step = 0;
	double loss = 0;
};

struct ExpertMergingResult {
	std::vector<at::Tensor> alpha; // per tensor [experts, chunks]
	bool chunked = false;          // any tensor with more than one chunk
};

// prompts[k]: expert k's calibration prompts. tv's model is left at the merged weights.
ExpertMergingResult learn_expert_merging(TaskVectorModel& tv,
                                         const std::vector<std::vector<std::vector<int64_t>>>& prompts,
                                         const ExpertMergingOptions& options,
                                         const std::function<void(const ExpertMergingStep&)>& on_step);

} // namespace weld::learned
