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

// Sum of |x| in double precision.
double l1_norm(std::span<const float> values);

// Counter-based random numbers: the i-th draw of a stream depends only on (key, i), never on
// thread count or the order in which tensors are processed.
uint64_t random_stream_key(uint64_t seed, std::string_view tensor_name, uint64_t model_index);
// Uniform in [0, 1) with 53 bits of resolution.
double random_uniform(uint64_t stream_key, uint64_t index);

} // namespace weld
