// How much two LoRA updates share: the principal angles between the column spaces of their
// ΔW = B · A (the output directions each adapter writes to).
#pragma once

#include "io/peft.h"
#include "lora/combine.h"

#include <cstddef>
#include <string>
#include <vector>

namespace weld::lora {

// Orthonormal basis [out, k] of ΔW's column space, k its numerical rank (singular values above
// σ_max · max(out, in) · ε, as numpy.linalg.matrix_rank). Computed from the factors: QR of B,
// then the SVD of the small r × in matrix Qᵀ B A. Scaling does not change the space.
linalg::MatrixD column_space(const LoraFactors& factors);

struct SubspaceOverlap {
	size_t rank1 = 0, rank2 = 0;
	double overlap = 0;    // ‖U1ᵀU2‖_F² / min(rank1, rank2): 1 when one space holds the other, 0 when orthogonal
	double max_cosine = 0; // σ_max(U1ᵀU2): the cosine of the smallest principal angle
};

// Overlap of two orthonormal bases of the same ambient dimension; both 0 when either is empty.
SubspaceOverlap subspace_overlap(const linalg::MatrixD& u1, const linalg::MatrixD& u2);

struct PairOverlap {
	std::string module;
	size_t first = 0, second = 0; // adapter indices, first < second
	SubspaceOverlap value;
};

// For every module and every pair of adapters that both adapt it (modules in first-seen order,
// pairs in index order). Throws weld::Error when a module's output size differs between them.
std::vector<PairOverlap> adapter_overlaps(const std::vector<PeftAdapter>& adapters);

} // namespace weld::lora
