// Twin-Merging (Lu et al. 2024, "Twin-Merging: Dynamic Integration of Modular Expertise in Model
// Merging"; the authors' code is LZY-the-boys/Twin-Merging): a shared model, the exclusive
// knowledge of each expert compressed by truncated SVD, and a router that mixes the exclusive
// parts per input. Writes a twin folder (see nn/twin.h for its layout and runtime):
//   - shared: τ_s = λ Σ_i τ_i (task arithmetic, summed), stored as the plain model θ_0 + τ_s;
//   - exclusive: per expert i and tensor, d_i = θ_i − (θ_0 + τ_s) (the shared model as stored, so
//     that at full rank θ_0 + τ_s + e_i is θ_i); a 2-D tensor keeps its truncated SVD of rank
//     r = max(1, floor(density · min(rows, cols))) (at::linalg_svd in float64, stored in float32),
//     e_i = U_r diag(S_r) V_rᵀ; other tensors keep d_i whole;
//   - router: an MLP H → 2H → 2H → K (LeakyReLU 0.01; the authors' BatchNorm and Dropout left out,
//     see nn::TwinRouter) over the mean of the shared model's final hidden state over each prompt,
//     trained with cross-entropy on which expert's data file the prompt came from: AdamW (weight
//     decay 0), batches of 256 in an order drawn each epoch from the seed.
// Everything is a function of the inputs and the seed (one thread: the same bytes every run).
//
// Includes ATen: only the learned merges' own files and their tests include it.
#pragma once

#include "learned/task_vector_model.h"
#include "plan/recipe.h"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace weld::learned {

struct TwinOptions {
	double lambda = 0.3;  // λ_s, the scale of the summed task vectors in the shared model
	double density = 0.1; // rank fraction of the exclusive parts
	double router_lr = 5e-4;
	int64_t router_epochs = 50;
	uint64_t seed = 0; // the router's initialization and batch order
};

struct TwinEpoch {
	int64_t epoch = 0; // 0-based
	double loss = 0;   // mean cross-entropy over the epoch's batches
};

struct TwinReport {
	double loss = 0;     // cross-entropy of the trained router on all its prompts
	double accuracy = 0; // the fraction of its prompts it routes to their own expert (argmax)
	size_t prompts = 0;
};

// The router's prompts of a data file: ids[0, loss_from) of each nn::read_sequences sequence
// (BOS + prompt for prompt/answer JSONL), or the whole sequence where the loss starts at the
// first token (text lines, token ids), as weld eval routes those.
std::vector<std::vector<int64_t>> twin_router_prompts(const std::filesystem::path& file, const nn::LlamaConfig& config,
                                                      const std::filesystem::path& model_dir);

// Writes a twin folder into dir (absent or empty): the shared model, twin.json and
// twin.safetensors. tv is the base and the K experts in float32 (its model's weights are left as
// the shared model's); expert_names and data (expert i's prompts, for router label i) have K
// entries; base_dir is the base's folder (its tokenizer reads the data).
TwinReport build_twin(TaskVectorModel& tv, const std::vector<std::string>& expert_names,
                      const std::vector<std::filesystem::path>& data, const std::filesystem::path& base_dir,
                      const TwinOptions& options, const std::filesystem::path& dir,
                      const std::function<void(const TwinEpoch&)>& on_epoch = {});

// The learned merge of a recipe: base_model, and every other model with its data: file (an error
// naming the model otherwise). Writes the twin folder to out (through OutputFolder: complete or
// not at all; an existing out needs force) with weld_recipe.yml, the recipe after a provenance
// comment, and returns that text. Sets libtorch to one thread.
std::string run_twin(const Recipe& recipe, double lambda, double density, double router_lr, int64_t router_epochs,
                     uint64_t seed, const std::filesystem::path& out, bool force, bool quiet);

} // namespace weld::learned
