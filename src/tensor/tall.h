// TALL masks and consensus masks ("Localizing Task Information for Improved Model Merging and
// Compression", Wang et al. 2024, https://arxiv.org/abs/2405.07813; reference code
// github.com/nik-dim/tall_masks).
//
// Given task vectors tau_t = theta_t - theta_0 and a multi-task vector tau_MTL built from them
// (their sum, a TIES merge, ...), task t's TALL mask marks the entries where theta_0 + tau_MTL
// is closer to theta_t than theta_0 is, up to a factor lambda_t:
//   m_t[j] = |tau_t[j]| > lambda_t * |tau_MTL[j] - tau_t[j]|
// (strict, as in the authors' code). The single expert is then approximately recovered as
//   theta_t ~ theta_0 + m_t (.) tau_MTL                          (tall_reconstruct)
// so tau_MTL plus one bit per entry and task compresses all experts. Consensus merging keeps
// only the entries at least k tasks need: consensus[j] = (sum_t m_t[j] >= k); k = 2 drops the
// "selfish" (one task) and "catastrophic" (no task) weights.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace weld {

// One task's mask: mask[j] = 1 if |task_vector[j]| > lambda * |mtl[j] - task_vector[j]|, else 0.
// All three spans have the same length.
void tall_mask(std::span<const float> mtl, std::span<const float> task_vector, double lambda, std::span<uint8_t> mask);

// Every task's mask: masks is resized to one vector per task vector, each as long as mtl.
// lambdas holds one value per task vector.
void tall_masks(std::span<const float> mtl, const std::vector<std::span<const float>>& task_vectors,
                const std::vector<double>& lambdas, std::vector<std::vector<uint8_t>>& masks);

// consensus[j] = 1 if at least k of the masks have mask[j] = 1 (k <= 0 keeps everything).
// consensus is resized to the masks' length (to 0 when there are no masks).
void consensus_mask(const std::vector<std::vector<uint8_t>>& masks, double k, std::vector<uint8_t>& consensus);

// One expert back from the compressed form: out[j] = base[j] + (mask[j] ? mtl[j] : 0).
void tall_reconstruct(std::span<const float> base, std::span<const float> mtl, std::span<const uint8_t> mask,
                      std::span<float> out);

} // namespace weld
