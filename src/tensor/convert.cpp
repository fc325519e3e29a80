#include "tensor/convert.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>

namespace weld {
namespace {

// The per-element conversions are inline and branch-free so the loops below can vectorize.
// Float ops must not sit under a condition: with GCC's default -ftrapping-math that alone
// blocks if-conversion, hence the integer mask selects.

// c ? a : b without a branch.
inline uint32_t select(bool c, uint32_t a, uint32_t b) {
	const uint32_t mask = 0u - static_cast<uint32_t>(c);
	return (a & mask) | (b & ~mask);
}

inline float bits_to_f32(uint32_t bits) {
	return std::bit_cast<float>(bits);
}
inline uint32_t f32_to_bits(float value) {
	return std::bit_cast<uint32_t>(value);
}

inline uint16_t f32_to_bf16_inline(float value) {
	uint32_t bits = f32_to_bits(value);
	bool is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
	// Adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to even; a carry into the
	// exponent is the correct result (largest finite values round up to inf).
	uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
	// NaN: keep sign and top payload bits, force the quiet bit so it cannot round to inf.
	uint32_t nan = (bits >> 16) | 0x0040u;
	return static_cast<uint16_t>(is_nan ? nan : rounded);
}

inline float f16_to_f32_inline(uint16_t h) {
	uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1Fu;
	uint32_t mant = h & 0x3FFu;
	// Subnormals (and zero) are mant * 2^-24, exact in float32.
	float sub = static_cast<float>(static_cast<int32_t>(mant)) * 0x1p-24f;
	uint32_t sub_bits = f32_to_bits(sub) | sign;
	uint32_t normal_bits = sign | ((exp + 112u) << 23) | (mant << 13);
	// Inf stays inf; NaN keeps its payload and becomes quiet.
	uint32_t special_bits = sign | 0x7F800000u | (mant << 13) | select(mant != 0, 0x00400000u, 0u);
	uint32_t bits = select(exp == 0, sub_bits, select(exp == 31, special_bits, normal_bits));
	return bits_to_f32(bits);
}

inline uint16_t f32_to_f16_inline(float value) {
	uint32_t bits = f32_to_bits(value);
	uint32_t sign = (bits >> 16) & 0x8000u;
	uint32_t abs = bits & 0x7FFFFFFFu;
	// |x| < 2^-14 becomes subnormal or zero: adding 0.5f makes the FPU round |x| to a multiple
	// of 2^-24 (ties to even); the low bits of the sum are then the f16 bit pattern (2^-14
	// itself comes out as 0x400, the smallest normal).
	float sum = bits_to_f32(abs) + 0.5f;
	uint32_t sub = f32_to_bits(sum) - f32_to_bits(0.5f);
	// Normal range: rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even;
	// a carry into the exponent is correct.
	uint32_t normal = (abs + 0xC8000FFFu + ((abs >> 13) & 1u)) >> 13;
	uint32_t nan = 0x7E00u | ((abs >> 13) & 0x3FFu);
	uint32_t finite = select(abs < 0x38800000u, sub, normal);
	// From 65520 on (inf included) the result is inf.
	uint32_t out = select(abs > 0x7F800000u, nan, select(abs >= 0x477FF000u, 0x7C00u, finite));
	return static_cast<uint16_t>(sign | out);
}

inline uint16_t load_u16(const uint8_t* p) {
	uint16_t v;
	std::memcpy(&v, p, sizeof v);
	return v;
}

inline void store_u16(uint8_t* p, uint16_t v) {
	std::memcpy(p, &v, sizeof v);
}

} // namespace

float bf16_to_f32(uint16_t bits) {
	return bits_to_f32(static_cast<uint32_t>(bits) << 16);
}
uint16_t f32_to_bf16(float value) {
	return f32_to_bf16_inline(value);
}
float f16_to_f32(uint16_t bits) {
	return f16_to_f32_inline(bits);
}
uint16_t f32_to_f16(float value) {
	return f32_to_f16_inline(value);
}

void convert_to_f32(DType dtype, const uint8_t* src, float* dst, size_t count) {
	switch (dtype) {
	case DType::F32:
		std::memcpy(dst, src, count * sizeof(float));
		return;
	case DType::F64:
		for (size_t i = 0; i < count; ++i) {
			double v;
			std::memcpy(&v, src + i * sizeof v, sizeof v);
			dst[i] = static_cast<float>(v);
		}
		return;
	case DType::BF16:
		for (size_t i = 0; i < count; ++i)
			dst[i] = bits_to_f32(static_cast<uint32_t>(load_u16(src + 2 * i)) << 16);
		return;
	case DType::F16:
		for (size_t i = 0; i < count; ++i)
			dst[i] = f16_to_f32_inline(load_u16(src + 2 * i));
		return;
	default:
		assert(false && "convert_to_f32: dtype is not arithmetic");
	}
}

void convert_from_f32(DType dtype, const float* src, uint8_t* dst, size_t count) {
	switch (dtype) {
	case DType::F32:
		std::memcpy(dst, src, count * sizeof(float));
		return;
	case DType::F64:
		for (size_t i = 0; i < count; ++i) {
			double v = src[i];
			std::memcpy(dst + i * sizeof v, &v, sizeof v);
		}
		return;
	case DType::BF16:
		for (size_t i = 0; i < count; ++i)
			store_u16(dst + 2 * i, f32_to_bf16_inline(src[i]));
		return;
	case DType::F16:
		for (size_t i = 0; i < count; ++i)
			store_u16(dst + 2 * i, f32_to_f16_inline(src[i]));
		return;
	default:
		assert(false && "convert_from_f32: dtype is not arithmetic");
	}
}

namespace {

// Whether any of `count` words has every exponent bit set (NaN or ±Inf): the largest magnitude
// (sign bit cleared) reaches the exponent mask. A max over a chunk vectorizes (about 4x the speed
// of OR-ing per-word comparisons here); the caller then looks for the exact index in that chunk.
template <typename Word> bool chunk_has_nonfinite(const uint8_t* src, size_t count, Word exponent) {
	constexpr Word kMagnitude = std::numeric_limits<Word>::max() >> 1; // every bit but the sign
	Word largest = 0;
	for (size_t i = 0; i < count; ++i) {
		Word w;
		std::memcpy(&w, src + i * sizeof(Word), sizeof(Word));
		largest = std::max<Word>(largest, w & kMagnitude);
	}
	return largest >= exponent;
}

template <typename Word> size_t first_nonfinite_words(const uint8_t* src, size_t count, Word exponent) {
	constexpr size_t kChunk = 4096;
	for (size_t first = 0; first < count; first += kChunk) {
		const size_t n = std::min(kChunk, count - first);
		const uint8_t* chunk = src + first * sizeof(Word);
		if (!chunk_has_nonfinite(chunk, n, exponent)) continue;
		for (size_t i = 0; i < n; ++i)
			if (chunk_has_nonfinite(chunk + i * sizeof(Word), 1, exponent)) return first + i;
	}
	return count;
}

} // namespace

size_t first_nonfinite(const float* values, size_t count) {
	return first_nonfinite_words<uint32_t>(reinterpret_cast<const uint8_t*>(values), count, 0x7f800000u);
}

size_t first_nonfinite(DType dtype, const uint8_t* src, size_t count) {
	switch (dtype) {
	case DType::F32:
		return first_nonfinite_words<uint32_t>(src, count, 0x7f800000u);
	case DType::F64:
		return first_nonfinite_words<uint64_t>(src, count, 0x7ff0000000000000ull);
	case DType::BF16:
		return first_nonfinite_words<uint16_t>(src, count, 0x7f80u);
	case DType::F16:
		return first_nonfinite_words<uint16_t>(src, count, 0x7c00u);
	default:
		return count;
	}
}

const char* nonfinite_name(float value) {
	if (std::isnan(value)) return "NaN";
	return value > 0 ? "+Inf" : "-Inf";
}

} // namespace weld
