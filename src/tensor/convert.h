// Conversions between stored element types and the float32 that methods compute in.
// Narrowing conversions round to nearest, ties to even; NaN stays NaN.
#pragma once

#include "io/dtype.h"

#include <cstddef>
#include <cstdint>

namespace weld {

float bf16_to_f32(uint16_t bits);
uint16_t f32_to_bf16(float value);
float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float value);

// src may be unaligned (it points into a memory map). dtype must be arithmetic
// (dtype_is_arithmetic); callers check and report.
void convert_to_f32(DType dtype, const uint8_t* src, float* dst, size_t count);
void convert_from_f32(DType dtype, const float* src, uint8_t* dst, size_t count);

// Index of the first NaN or ±Inf among count values, or count when every one is finite.
size_t first_nonfinite(const float* values, size_t count);
// The same on stored values (src may be unaligned); count for non-float dtypes.
size_t first_nonfinite(DType dtype, const uint8_t* src, size_t count);
// "NaN", "+Inf" or "-Inf", for messages.
const char* nonfinite_name(float value);

} // namespace weld
