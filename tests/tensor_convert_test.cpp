#include "tensor/convert.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace weld {
namespace {

float f32(uint32_t bits) {
	return std::bit_cast<float>(bits);
}

TEST(TensorConvertTest, Bf16RoundsToNearestEven) {
	EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
	// Exactly halfway: ties go to the even mantissa.
	EXPECT_EQ(f32_to_bf16(f32(0x3F808000)), 0x3F80);
	EXPECT_EQ(f32_to_bf16(f32(0x3F818000)), 0x3F82);
	// Just off halfway rounds to the nearer value.
	EXPECT_EQ(f32_to_bf16(f32(0x3F808001)), 0x3F81);
	EXPECT_EQ(f32_to_bf16(f32(0x3F807FFF)), 0x3F80);
	EXPECT_EQ(f32_to_bf16(f32(0xBF818000)), 0xBF82);
	EXPECT_EQ(bf16_to_f32(0x3F82), f32(0x3F820000));
}

TEST(TensorConvertTest, Bf16SpecialValues) {
	const float inf = std::numeric_limits<float>::infinity();
	EXPECT_EQ(f32_to_bf16(inf), 0x7F80);
	EXPECT_EQ(f32_to_bf16(-inf), 0xFF80);
	// FLT_MAX lies above the halfway point to bf16's largest finite value, so it rounds to inf.
	EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
	EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
	// A NaN whose payload sits only in the dropped bits must not turn into inf.
	const uint16_t nan = f32_to_bf16(f32(0x7F800001));
	EXPECT_TRUE(std::isnan(bf16_to_f32(nan)));
	EXPECT_NE(nan & 0x0040, 0) << "quiet bit";
	EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
	EXPECT_EQ(bf16_to_f32(0x7F80), inf);
}

TEST(TensorConvertTest, Bf16RoundTripsEveryBitPattern) {
	for (uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
		const float value = bf16_to_f32(static_cast<uint16_t>(bits));
		if (std::isnan(value))
			EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(value)))) << bits;
		else
			ASSERT_EQ(f32_to_bf16(value), bits) << bits;
	}
}

TEST(TensorConvertTest, F16NormalsAndTies) {
	EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
	EXPECT_EQ(f32_to_f16(-2.0f), 0xC000);
	EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
	EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
	// 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (down); 1 + 3*2^-11 ties up.
	EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3C00);
	EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);
	EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
	EXPECT_EQ(f16_to_f32(0x3555), f32(0x3EAAA000)); // 0.333251953125
}

TEST(TensorConvertTest, F16MaxAndOverflow) {
	const float inf = std::numeric_limits<float>::infinity();
	EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);
	EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
	// Below the halfway point 65520 rounds down to max; from 65520 on it rounds to inf.
	EXPECT_EQ(f32_to_f16(65519.99f), 0x7BFF);
	EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);
	EXPECT_EQ(f32_to_f16(1e6f), 0x7C00);
	EXPECT_EQ(f32_to_f16(-1e6f), 0xFC00);
	EXPECT_EQ(f32_to_f16(inf), 0x7C00);
	EXPECT_EQ(f32_to_f16(-inf), 0xFC00);
	EXPECT_EQ(f16_to_f32(0x7C00), inf);
	EXPECT_EQ(f16_to_f32(0xFC00), -inf);
}

TEST(TensorConvertTest, F16Subnormals) {
	EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);        // smallest subnormal
	EXPECT_EQ(f32_to_f16(1023 * 0x1p-24f), 0x03FF); // largest subnormal
	EXPECT_EQ(f32_to_f16(0x1p-14f), 0x0400);        // smallest normal
	EXPECT_EQ(f32_to_f16(-0x1p-24f), 0x8001);
	// Halfway cases in the subnormal range tie to even.
	EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);
	EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002);
	EXPECT_EQ(f32_to_f16(0x1.0002p-25f), 0x0001);
	// Just below 2^-14 rounds up into the smallest normal.
	EXPECT_EQ(f32_to_f16(0x1.fffffep-15f), 0x0400);
	EXPECT_EQ(f32_to_f16(1e-10f), 0x0000);
	EXPECT_EQ(f16_to_f32(0x0001), 0x1p-24f);
	EXPECT_EQ(f16_to_f32(0x03FF), 1023 * 0x1p-24f);
	EXPECT_EQ(f16_to_f32(0x8200), -512 * 0x1p-24f);
}

TEST(TensorConvertTest, F16NaN) {
	EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
	EXPECT_TRUE(std::isnan(f16_to_f32(0x7C01)));
	const uint16_t h = f32_to_f16(f32(0x7F800001)); // payload only in dropped bits
	EXPECT_EQ(h & 0x7C00, 0x7C00);
	EXPECT_NE(h & 0x03FF, 0);
	EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(TensorConvertTest, F16RoundTripsEveryBitPattern) {
	for (uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
		const float value = f16_to_f32(static_cast<uint16_t>(bits));
		if (std::isnan(value))
			EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(value)))) << bits;
		else
			ASSERT_EQ(f32_to_f16(value), bits) << bits;
	}
}

// Converts through a buffer deliberately misaligned by one byte.
template <typename T> void check_buffer_round_trip(DType dtype, const std::vector<float>& values) {
	std::vector<uint8_t> storage(values.size() * sizeof(T) + 1);
	uint8_t* bytes = storage.data() + 1;
	convert_from_f32(dtype, values.data(), bytes, values.size());
	std::vector<float> back(values.size());
	convert_to_f32(dtype, bytes, back.data(), values.size());
	EXPECT_EQ(back, values);
}

TEST(TensorConvertTest, BufferConversionsUnaligned) {
	// Values exact in every format.
	const std::vector<float> values = {0.0f, 1.0f, -2.5f, 0.125f, 96.0f, -0.0f, 3.0f};
	check_buffer_round_trip<float>(DType::F32, values);
	check_buffer_round_trip<double>(DType::F64, values);
	check_buffer_round_trip<uint16_t>(DType::F16, values);
	check_buffer_round_trip<uint16_t>(DType::BF16, values);
}

TEST(TensorConvertTest, BufferConversionsRound) {
	const float value = f32(0x3F818000);
	uint8_t bytes[2];
	convert_from_f32(DType::BF16, &value, bytes, 1);
	uint16_t bits;
	std::memcpy(&bits, bytes, 2);
	EXPECT_EQ(bits, 0x3F82);

	const double d = 1.0 + 0x1p-30; // not representable in float32: rounds to 1
	uint8_t dbytes[8];
	std::memcpy(dbytes, &d, 8);
	float out;
	convert_to_f32(DType::F64, dbytes, &out, 1);
	EXPECT_EQ(out, 1.0f);
}

} // namespace
} // namespace weld

namespace weld {
namespace {

// Hand-built stored values: a NaN or Inf is found at its index in every float dtype,
// including past the first 4096-value chunk; finite extremes (max, subnormals) are not.
TEST(FirstNonfinite, FindsNanAndInfAtTheirIndexInEveryDtype) {
	const size_t n = 5000;
	std::vector<float> values(n, 1.0f);
	values[0] = std::numeric_limits<float>::max();
	values[1] = std::numeric_limits<float>::denorm_min();
	values[2] = -0.0f;
	EXPECT_EQ(first_nonfinite(values.data(), n), n);
	values[4321] = std::numeric_limits<float>::infinity();
	EXPECT_EQ(first_nonfinite(values.data(), n), 4321u);
	values[17] = std::numeric_limits<float>::quiet_NaN();
	EXPECT_EQ(first_nonfinite(values.data(), n), 17u);
	EXPECT_STREQ(nonfinite_name(values[17]), "NaN");
	EXPECT_STREQ(nonfinite_name(values[4321]), "+Inf");
	EXPECT_STREQ(nonfinite_name(-values[4321]), "-Inf");

	// Negative finite values (sign bit set) are finite in every width.
	const uint16_t bf16[] = {0xbf80, 0xff7f, 0xff80, 0x7fc0}; // -1, -max, -Inf, NaN
	EXPECT_EQ(first_nonfinite(DType::BF16, reinterpret_cast<const uint8_t*>(bf16), 4), 2u);
	EXPECT_EQ(first_nonfinite(DType::BF16, reinterpret_cast<const uint8_t*>(bf16), 2), 2u);
	const uint16_t f16[] = {0xbc00, 0xfbff, 0x8001, 0x7e00}; // -1, -65504, -subnormal, NaN
	EXPECT_EQ(first_nonfinite(DType::F16, reinterpret_cast<const uint8_t*>(f16), 4), 3u);
	values.assign(n, -1.0f);
	values[4999] = -std::numeric_limits<float>::max();
	EXPECT_EQ(first_nonfinite(values.data(), n), n);
	EXPECT_EQ(first_nonfinite(DType::F32, reinterpret_cast<const uint8_t*>(values.data()), n), n);
	const double f64[] = {-1e300, -1e-300, std::numeric_limits<double>::infinity()};
	EXPECT_EQ(first_nonfinite(DType::F64, reinterpret_cast<const uint8_t*>(f64), 3), 2u);
	const int32_t ints[] = {0x7f800000, -1};
	EXPECT_EQ(first_nonfinite(DType::I32, reinterpret_cast<const uint8_t*>(ints), 2), 2u) << "not a float type";
}

} // namespace
} // namespace weld
