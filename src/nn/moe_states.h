// weld moe's hidden gate modes on the runtime: the base model's residual stream for each prompt.
// Torch-free header.
#pragma once

#include "moe/moe_build.h"

namespace weld::nn {

// moe::PromptStates computed by LlamaModel in float32 (the base model loaded once, on first use).
// The stream entering layer i is transformers' hidden_states[i]: the embeddings for layer 0,
// else the output of layer i - 1.
moe::PromptStates runtime_prompt_states();

} // namespace weld::nn
