// RegMean's closed form for one linear weight, shared by `regmean` (Grams from weld stats) and
// `regmean_pp` (Grams through the merged model, src/learned/regmean_pp.cpp).
#pragma once

#include <cstddef>
#include <span>
#include <vector>

namespace weld {

// W* = argmin Σ_i ||X_i Wᵀ - X_i W_iᵀ||², i.e. W*ᵀ = (Σ G̃_i)⁻¹ Σ G̃_i W_iᵀ with G̃_i = G_i whose
// off-diagonal entries are scaled by alpha. weights: each W_i [rows, cols] row-major; grams: each
// G_i [cols, cols]. Returns whether the solve fell back to LU. Throws weld::Error (singular).
bool regmean_solve(const std::vector<std::span<const float>>& weights, const std::vector<std::span<const float>>& grams,
                   size_t rows, size_t cols, double alpha, std::span<float> out);

} // namespace weld
