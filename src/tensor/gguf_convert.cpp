#include "tensor/gguf_convert.h"

#include "tensor/convert.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace weld {
namespace {

void dequantize_q8_0(const uint8_t* src, float* dst, size_t count) {
	for (size_t b = 0; b < count / kQ8_0Block; b++, src += kQ8_0BlockBytes) {
		uint16_t scale_bits;
		std::memcpy(&scale_bits, src, 2);
		const float d = f16_to_f32(scale_bits);
		for (size_t j = 0; j < kQ8_0Block; j++)
			dst[b * kQ8_0Block + j] = d * static_cast<float>(static_cast<int8_t>(src[2 + j]));
	}
}

void quantize_q8_0(const float* src, uint8_t* dst, size_t count) {
	for (size_t b = 0; b < count / kQ8_0Block; b++, dst += kQ8_0BlockBytes) {
		const float* x = src + b * kQ8_0Block;
		float amax = 0;
		for (size_t j = 0; j < kQ8_0Block; j++)
			amax = std::max(amax, std::fabs(x[j]));
		const float d = amax / 127.0f;
		const float id = d != 0 ? 1.0f / d : 0.0f;
		const uint16_t scale_bits = f32_to_f16(d);
		std::memcpy(dst, &scale_bits, 2);
		for (size_t j = 0; j < kQ8_0Block; j++)
			dst[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[j] * id)));
	}
}

} // namespace

void ggml_to_f32(GgmlType type, const uint8_t* src, float* dst, size_t count) {
	switch (type) {
	case GgmlType::F32:
		convert_to_f32(DType::F32, src, dst, count);
		break;
	case GgmlType::F16:
		convert_to_f32(DType::F16, src, dst, count);
		break;
	case GgmlType::BF16:
		convert_to_f32(DType::BF16, src, dst, count);
		break;
	case GgmlType::Q8_0:
		dequantize_q8_0(src, dst, count);
		break;
	}
}

void ggml_from_f32(GgmlType type, const float* src, uint8_t* dst, size_t count) {
	switch (type) {
	case GgmlType::F32:
		convert_from_f32(DType::F32, src, dst, count);
		break;
	case GgmlType::F16:
		convert_from_f32(DType::F16, src, dst, count);
		break;
	case GgmlType::BF16:
		convert_from_f32(DType::BF16, src, dst, count);
		break;
	case GgmlType::Q8_0:
		quantize_q8_0(src, dst, count);
		break;
	}
}

} // namespace weld
