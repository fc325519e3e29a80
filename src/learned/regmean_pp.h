// RegMean++ (Nguyen et al. 2025): RegMean whose Gram matrices come from each task's data run
// through the merged model itself, merged in forward order, so every linear map's inputs reflect
// the merge of everything before it. Per layer: q/k/v (one input), then o, then gate/up, then
// down; lm_head last (when untied). Other tensors (embeddings, norms, biases) are averaged first.
// Each stage's Gram G_i = X_iᵀX_i / N_i is taken on task i's sequences (every real token) with
// the stages before it already merged; the stage is then solved as RegMean (methods/regmean.h).
#pragma once

#include "nn/llama.h"
#include "nn/train.h"

#include <vector>

namespace weld::learned {

// Merges models (same architecture) into `merged` (a loaded copy of one of them, overwritten).
void regmean_pp(const std::vector<const nn::LlamaModel*>& models,
                const std::vector<std::vector<nn::TrainingSequence>>& data, double alpha, nn::LlamaModel& merged);

} // namespace weld::learned
