// The linear assignment problem: Debian 12 packages no C/C++ solver, so weld has its own
// (Jonker–Volgenant shortest augmenting paths, O(n³)).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace weld::linalg {

// The permutation p of 0..n-1 that maximizes Σ_i score[i·n + p[i]] (score is n×n, row-major,
// finite). Ties are broken deterministically (the same input gives the same p).
std::vector<int64_t> max_weight_assignment(std::span<const double> score, int64_t n);

} // namespace weld::linalg
