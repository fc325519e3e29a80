// FW-Merging (Chen et al. 2025): Frank–Wolfe over a pool of fine-tuned models, some possibly
// irrelevant, minimizing the loss f of the merged model on a small labeled proxy set of the
// target tasks. Every iterate is θ_base + Σ_k c[k][l] τ_k^l, so the method runs on the
// coefficients; ⟨∇_{θ^l} f, τ_k^l⟩ = ∂f/∂c[k][l] comes from one backward pass.
//
// The pool's vertices are v_0 = θ_base and v_i = θ_base + scaling·τ_i (scaling 1: the models
// themselves). From θ_0 = θ_base, each step takes per tensor l (the layer-wise linear
// minimization oracle) the vertex i* = argmin_i ⟨g^l, v_i^l − θ_t^l⟩, g = ∇f(θ_t), and moves
// θ_{t+1}^l = θ_t^l + γ_t (v_{i*}^l − θ_t^l) with γ_t = step_size · 2/(t+2) (hard). A vertex
// that would not lower the linearized loss is never taken: i* = the current point then.
// soft: the same steps, then AdaMerging's entropy minimization (on the proxy prompts, labels
// unused) refines the coefficients of the models the steps chose, the others held at 0 — a
// one-shot form of the authors' soft variant, which runs AdaMerging over the chosen models.
#pragma once

#include "learned/task_vector_model.h"
#include "nn/train.h"

#include <functional>

namespace weld::learned {

struct FwOptions {
	bool soft = false;
	int64_t steps = 10;
	double step_size = 1;
	double scaling = 1;      // vertices θ_base + scaling·τ_i
	int64_t soft_steps = 50; // soft: AdaMerging steps
	double soft_lr = 1e-2;   // soft: AdaMerging's Adam learning rate
};

// The layer-wise oracle. inner [K, T] holds ⟨g^l, τ_k^l⟩ and c [K, T] the current coefficients
// (θ_t = θ_base + Σ_k c[k][l] τ_k^l). Per tensor: the expert k whose vertex minimizes
// ⟨g^l, v − θ_t^l⟩, -1 for the base vertex, or -2 when no vertex has a negative value (stay).
std::vector<int64_t> fw_vertices(const at::Tensor& inner, const at::Tensor& c, double scaling);

struct FwStep {
	int64_t step = 0;
	double loss = 0;
	std::vector<int64_t> chosen; // per tensor
};

// The coefficients [experts, tensors] after options.steps Frank–Wolfe steps on the mean
// cross-entropy of the proxy sequences' answers; tv's model is left at them.
at::Tensor learn_fw_merging(TaskVectorModel& tv, const std::vector<nn::TrainingSequence>& proxy,
                            const FwOptions& options, const std::function<void(const FwStep&)>& on_step);

} // namespace weld::learned
