// MWA's weights (Metrics-Weighted Averaging, Choi & Yu 2025), shared by the mwa merge method and
// weld lora-merge --combination-type mwa.
#pragma once

#include <string_view>
#include <vector>

namespace weld {

enum class MwaMetric { Loss, Step };

// loss: w_i = loss_i^-p / Σ_j loss_j^-p; step: w_i = step_i^p / Σ_j step_j^p. Throws weld::Error,
// prefixed by `context`, for a metric that is not positive or weights that are not finite.
std::vector<double> mwa_weights(const std::vector<double>& metrics, MwaMetric metric, double penalty,
                                std::string_view context);

} // namespace weld
