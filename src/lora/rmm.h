// Reversible Model Merging (Alipour & Amiri 2025, arXiv:2510.14163): instead of one merged adapter,
// a basis of K adapters from which each of the n inputs is recovered by a linear combination.
//
// Per module and per factor (A and B apart, as the paper treats each factor's task vectors), the
// n inputs' factors are the columns of X = [vec(F_1) … vec(F_n)] (P × n). The basis Φ (P × K) and
// the coefficients C (K × n) minimising Σ_i ‖vec(F_i) − Φ c_i‖² are, by Eckart–Young, the top K
// singular triplets of X = U S Vᵀ: Φ = U_K S_K, C = V_Kᵀ. Reverting task i gives F̂_i = Φ c_i, and
// ΔŴ_i = B̂_i Â_i. With K = n (or inputs spanning K dimensions) the inputs come back exactly.
#pragma once

#include "lora/combine.h"

#include <span>
#include <vector>

namespace weld::lora {

struct FactorBasis {
	std::vector<std::vector<float>> basis; // K vectors of the factor's size (Φ's columns)
	linalg::MatrixD coefficients;          // n × K: row i is task i's c_i
};

// The rank-K basis of n equally sized task vectors (K <= n; the caller checks).
FactorBasis fit_factor_basis(const std::vector<std::span<const float>>& tasks, size_t rank);

// Σ_k c_ik φ_k for task i.
std::vector<float> reconstruct_factor(const FactorBasis& fit, size_t task);

// ‖scaling_r B̂ Â − scaling_o B A‖_F / ‖scaling_o B A‖_F (0 when both are 0), from the factors'
// r × r Gram matrices, never forming the out × in updates.
double relative_update_error(const LoraFactors& original, const LoraFactors& reverted);
// ‖s B A‖_F² from the factors.
double update_norm_squared(const LoraFactors& factors);
// ‖s_x B_x A_x − s_y B_y A_y‖_F² from the factors.
double update_distance_squared(const LoraFactors& x, const LoraFactors& y);

} // namespace weld::lora
