// Building blocks shared by merge methods. All work on float32 buffers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace weld {

// Zeroes every element except the k largest by magnitude. Among equal magnitudes the lower
// index is kept, so the result is deterministic. O(n) on average (selection, not a sort).
void keep_top_k_by_magnitude(std::span<float> values, size_t k);

// Model Breadcrumbs' band (mergekit's magnitude_outliers): with the elements ordered by
// magnitude (largest first; among equal magnitudes the lower index counts as larger, as in
// keep_top_k_by_magnitude), zeroes the first skip_largest and everything after the next keep.
// skip_largest = 0 is keep_top_k_by_magnitude(values, keep).
void keep_magnitude_band(std::span<float> values, size_t skip_largest, size_t keep);

// DELLA's MagPrune (mergekit's della_magprune) on a tensor of rows of row_length elements (the
// last dimension): within a row, the element of magnitude rank r (0 = smallest; equal magnitudes
// rank in index order) survives with probability
//   p = density - epsilon + 2 * epsilon * r / (row_length - 1)   (p = density for one-element rows)
// drawn as random_uniform(stream_key, j) < p for the element at flat index j; the others become 0.
// The caller checks 0 < density - epsilon and density + epsilon < 1.
void della_magprune(std::span<float> values, size_t row_length, double density, double epsilon, uint64_t stream_key);

// Sum of |x| in double precision.
double l1_norm(std::span<const float> values);

// Counter-based random numbers: the i-th draw of a stream depends only on (key, i), never on
// thread count or the order in which tensors are processed.
uint64_t random_stream_key(uint64_t seed, std::string_view tensor_name, uint64_t model_index);
namespace random_detail {
// splitmix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
inline uint64_t mix64(uint64_t z) {
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
} // namespace random_detail

// Uniform in [0, 1) with 53 bits of resolution: the index-th output of a splitmix64 generator
// seeded with stream_key. Inline: DARE draws one per element.
inline double random_uniform(uint64_t stream_key, uint64_t index) {
	const uint64_t bits = random_detail::mix64(stream_key + (index + 1) * random_detail::kGolden);
	return static_cast<double>(bits >> 11) * 0x1p-53;
}

// DARE's drop: zeroes values[j] unless random_uniform(stream_key, first_index + j) < probability
// (the same draws, compared in integers).
void random_drop(std::span<float> values, uint64_t stream_key, uint64_t first_index, double probability);

} // namespace weld
