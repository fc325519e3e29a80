// Element types of safetensors files, with their on-disk names and sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace weld {

enum class DType : uint8_t { BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F8_E4M3, F8_E5M2, F16, BF16, F32, F64 };

// "F32", "BF16", ... as written in safetensors headers; nullopt for an unknown name.
std::optional<DType> dtype_from_safetensors_name(std::string_view name);
std::string_view dtype_safetensors_name(DType dtype);
size_t dtype_size(DType dtype);
// True for the float types weld can do arithmetic on (F16, BF16, F32, F64).
bool dtype_is_arithmetic(DType dtype);

// Recipe / torch spellings: "float32", "bfloat16", "float16", "float64" (also "fp16", "bf16", ...).
std::optional<DType> dtype_from_torch_name(std::string_view name);
// "float32", "bfloat16", ... as written in config.json's torch_dtype.
std::string_view dtype_torch_name(DType dtype);

} // namespace weld
