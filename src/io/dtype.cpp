#include "io/dtype.h"

#include <array>

namespace weld {
namespace {

struct DTypeRow {
	DType dtype;
	std::string_view safetensors_name;
	std::string_view torch_name;
	size_t size;
};

constexpr std::array<DTypeRow, 15> kDTypes = {{
    {DType::BOOL, "BOOL", "bool", 1},
    {DType::U8, "U8", "uint8", 1},
    {DType::I8, "I8", "int8", 1},
    {DType::U16, "U16", "uint16", 2},
    {DType::I16, "I16", "int16", 2},
    {DType::U32, "U32", "uint32", 4},
    {DType::I32, "I32", "int32", 4},
    {DType::U64, "U64", "uint64", 8},
    {DType::I64, "I64", "int64", 8},
    {DType::F8_E4M3, "F8_E4M3", "float8_e4m3fn", 1},
    {DType::F8_E5M2, "F8_E5M2", "float8_e5m2", 1},
    {DType::F16, "F16", "float16", 2},
    {DType::BF16, "BF16", "bfloat16", 2},
    {DType::F32, "F32", "float32", 4},
    {DType::F64, "F64", "float64", 8},
}};
static_assert(static_cast<size_t>(DType::F64) + 1 == kDTypes.size(), "kDTypes must list every DType in order");

const DTypeRow& row(DType dtype) {
	return kDTypes[static_cast<size_t>(dtype)];
}

} // namespace

std::optional<DType> dtype_from_safetensors_name(std::string_view name) {
	for (const auto& r : kDTypes)
		if (r.safetensors_name == name) return r.dtype;
	return std::nullopt;
}

std::string_view dtype_safetensors_name(DType dtype) {
	return row(dtype).safetensors_name;
}
size_t dtype_size(DType dtype) {
	return row(dtype).size;
}
std::string_view dtype_torch_name(DType dtype) {
	return row(dtype).torch_name;
}

bool dtype_is_arithmetic(DType dtype) {
	return dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F32 || dtype == DType::F64;
}

std::optional<DType> dtype_from_torch_name(std::string_view name) {
	if (name.starts_with("torch.")) name.remove_prefix(6);
	if (name == "float32" || name == "fp32" || name == "float") return DType::F32;
	if (name == "bfloat16" || name == "bf16") return DType::BF16;
	if (name == "float16" || name == "fp16" || name == "half") return DType::F16;
	if (name == "float64" || name == "fp64" || name == "double") return DType::F64;
	return std::nullopt;
}

} // namespace weld
