// Internal to weld align's data-driven methods (align_activation, align_rotate, pleas): the
// activations of a model's linear maps on data. Includes ATen.
#pragma once

#include "nn/llama.h"

#include <map>
#include <string>
#include <vector>

namespace weld::nn::detail {

std::string layer_name(int64_t layer, const char* rest);

// What to keep of a linear map: its input or its output.
enum class Side { Input, Output };

// Runs the model over the sequences with the linear observer on, and returns, per requested
// weight name, its input or output at every real (unpadded) token, [tokens, width] in double;
// with `hidden`, also the residual stream after every layer, stacked as [layers·tokens, hidden].
std::map<std::string, at::Tensor> capture(LlamaModel& model, const std::vector<std::vector<int64_t>>& sequences,
                                          const std::map<std::string, Side>& wanted, at::Tensor* hidden = nullptr);

// Columns scaled to mean 0 and mean square 1 (a column that never varies stays 0).
at::Tensor standardize(const at::Tensor& x);

// Pearson correlation of every column of a with every column of b.
at::Tensor correlation(const at::Tensor& a, const at::Tensor& b);

} // namespace weld::nn::detail
