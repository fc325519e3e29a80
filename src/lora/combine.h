// Combining LoRA adapters as PEFT's LoraModel.add_weighted_adapter does (peft/tuners/lora/model.py
// and peft/utils/merge_utils.py), one module at a time.
//
// Every input module is (A [r, in], B [out, r], scaling s), its update ΔW = s · B · A. The result
// has scaling 1 (PEFT gives it lora_alpha = r), so its ΔW is B · A:
// - linear, ties, dare_linear, dare_ties, magnitude_prune: the A factors and the B factors are
//   merged separately with weights sign(w s) · sqrt(|w s|) on A and sqrt(|w s|) on B (all ranks equal);
// - cat: A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1 B_2 ...]: the exact Σ w_i s_i B_i A_i;
// - svd, ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd: the matching merge of the
//   updates s_i B_i A_i with weights w_i s_i (PEFT scales these twice: Σ w_i s_i² B_i A_i for svd),
//   then the rank-r truncated SVD U S Vᵀ gives B = U S, A = Vᵀ, optionally clamped.
// DARE's random masks come from weld's counter-based streams (seed, tensor name, adapter index),
// not torch's generator: same seed, same bytes, but not the masks PEFT draws.
#pragma once

#include "linalg/linalg.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weld::lora {

enum class CombinationType {
	Svd,
	Linear,
	Cat,
	Ties,
	TiesSvd,
	DareLinear,
	DareTies,
	DareLinearSvd,
	DareTiesSvd,
	MagnitudePrune,
	MagnitudePruneSvd,
};

// PEFT's names ("svd", "dare_ties", ...). parse throws weld::Error listing the known names.
CombinationType parse_combination_type(std::string_view name);
std::string_view to_string(CombinationType type);
// The *_svd types (and svd) re-factorise ΔW by a truncated SVD.
bool is_svd_type(CombinationType type);
// ties, dare_*, magnitude_prune* read density; ties and dare_ties* read the majority sign method.
bool uses_density(CombinationType type);
bool uses_majority_sign(CombinationType type);

enum class MajoritySign { Total, Frequency };
MajoritySign parse_majority_sign(std::string_view name);

struct CombineOptions {
	CombinationType type = CombinationType::Svd;
	std::vector<double> weights;   // one per adapter
	std::optional<double> density; // required by the types that prune
	MajoritySign majority_sign = MajoritySign::Total;
	std::optional<size_t> svd_rank;  // default: the largest input rank
	std::optional<double> svd_clamp; // quantile in [0, 1] of the factors' values
	uint64_t seed = 0;               // DARE's masks
};

// One adapter's factors for one module.
struct LoraFactors {
	linalg::MatrixF a; // [r, in]
	linalg::MatrixF b; // [out, r]
	double scaling = 1;
};

// The rank the combined adapter gets (PEFT's new_rank): the common rank for linear, ties, dare_*
// and magnitude_prune (Error when the ranks differ), their sum for cat, svd_rank or the largest
// for the SVD types. With one adapter PEFT always combines linearly: callers pass Linear then.
size_t combined_rank(const CombineOptions& options, const std::vector<size_t>& adapter_ranks);

// Checks the options against the adapter count (weights, density range, clamp range). Throws
// weld::Error naming the option.
void check_options(const CombineOptions& options, size_t adapter_count);

// Combines one module. `modules[i]` is adapter `adapter_index[i]`'s factors (adapters lacking the
// module are left out, as PEFT skips them); `module_name` seeds DARE's masks and names errors.
// Returns factors with scaling 1 and rank `rank` (zero rows of A / columns of B fill up a smaller
// one, which leaves ΔW unchanged).
LoraFactors combine_module(const CombineOptions& options, const std::string& module_name,
                           const std::vector<const LoraFactors*>& modules, const std::vector<size_t>& adapter_index,
                           size_t rank);

// ΔW = scaling · B · A in double precision, [out, in].
linalg::MatrixD delta_weight(const LoraFactors& factors);

// Rank-`rank` factors (B = U S, A = Vᵀ, scaling 1) of a dense update by the full SVD, the factors
// clamped to [-q, q] with q the `clamp` quantile of their values when given, padded with zeros
// up to `rank` when the matrix is smaller.
LoraFactors factorize_truncated(const linalg::MatrixD& delta, size_t rank, std::optional<double> clamp);
// The same for the update s·B·A given by its factors, without forming it when B·A's inner
// dimension allows (the SVD of the factors' QR product).
LoraFactors refactorize(const LoraFactors& factors, size_t rank, std::optional<double> clamp);
// The same from a thin SVD U S Vᵀ of the update.
LoraFactors factors_from_svd(const linalg::SvdD& svd, size_t rank, std::optional<double> clamp);

} // namespace weld::lora
