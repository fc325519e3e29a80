// The training loss of the runtime's models, shared by weld train and the learned merges.
// Includes ATen (torch-side files only).
#pragma once

#include "nn/llama.h"
#include "nn/train.h"

#include <vector>

namespace weld::nn {

// Mean negative log-likelihood of the sequences' targets (every token from loss_from on, each
// predicted from the ones before it), over the batch: right-padded, one forward pass.
at::Tensor mean_target_loss(const LlamaModel& model, const std::vector<TrainingSequence>& sequences);

} // namespace weld::nn
