// Localize-and-Stitch, learned mode (He et al. 2024): per task, a mask over its task vector is
// learned on a few labeled examples of that task, then the masked task vectors are stitched into
// the base as in the dataless mode:
//   localize: S_k starts at +sigmoid_bias on the top `density` of |τ_k| (per tensor, as weld's
//     dataless mode) and −sigmoid_bias elsewhere; Adam lowers
//       L(θ_base + σ(S_k) ⊙ τ_k) + l1 · mean σ(S_k)
//     (L: the mean cross-entropy of the examples' answers); the mask is γ_k = [S_k > 0].
//   stitch: θ = θ_base + Σ_k (γ_k / Σ_j γ_j) ⊙ τ_k, nothing added where no mask is set.
// The authors' code updates S by hand-written gradient descent at lr 1e7 and pushes |S| up with
// its l1 term (the opposite of the paper's sparsity penalty, which weld follows); weld uses Adam,
// scale-free in the gradient's size.
#pragma once

#include "learned/task_vector_model.h"
#include "nn/train.h"

#include <functional>

namespace weld::learned {

struct LocalizeOptions {
	double density = 0.1; // initial mask: top fraction of |τ| per tensor
	double sigmoid_bias = 3;
	int64_t steps = 20; // full-batch Adam steps on the task's examples
	double lr = 0.1;
	double l1 = 1; // weight of mean σ(S)
};

struct LocalizeStep {
	size_t expert = 0;
	int64_t step = 0;
	double loss = 0;
	double kept = 0; // fraction of weights with S > 0
};

// γ_k = [S_k > 0] per tensor, learned on the expert's examples.
std::vector<at::Tensor> learn_localize_mask(TaskVectorModel& tv, size_t expert,
                                            const std::vector<nn::TrainingSequence>& examples,
                                            const LocalizeOptions& options,
                                            const std::function<void(const LocalizeStep&)>& on_step);

// Sets tv's model to θ_base + Σ_k (γ_k / Σ_j γ_j) ⊙ τ_k; masks[k][n] is expert k's on tensor n.
void stitch(TaskVectorModel& tv, const std::vector<std::vector<at::Tensor>>& masks);

} // namespace weld::learned
