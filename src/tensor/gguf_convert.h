// Conversions between float32 and the ggml tensor types weld reads and writes: f32, f16, bf16
// and q8_0 (blocks of 32 values: an f16 scale d = max|x| / 127, then 32 int8 q = round(x / d),
// as ggml-quants' quantize_row_q8_0_ref; x = d * q back).
#pragma once

#include "io/gguf.h"

#include <cstddef>
#include <cstdint>

namespace weld {

constexpr size_t kQ8_0Block = 32;
constexpr size_t kQ8_0BlockBytes = 34;

// count must be a multiple of the type's block (32 for q8_0); src may be unaligned.
void ggml_to_f32(GgmlType type, const uint8_t* src, float* dst, size_t count);
void ggml_from_f32(GgmlType type, const float* src, uint8_t* dst, size_t count);

} // namespace weld
