// fast_exp against the C library's exp: within 2 ulp everywhere exp is finite and nonzero, the
// same limits (underflow to 0, overflow to inf, NaN through), subnormal results included.
#include "tensor/fast_exp.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>

namespace weld {
namespace {

int64_t ulp_distance(double a, double b) {
	const auto ia = static_cast<int64_t>(std::bit_cast<uint64_t>(a)),
	           ib = static_cast<int64_t>(std::bit_cast<uint64_t>(b));
	return ia > ib ? ia - ib : ib - ia;
}

TEST(FastExp, WithinTwoUlpOfTheLibraryOverTheWholeRange) {
	std::mt19937_64 random(7);
	std::uniform_real_distribution<double> wide(-746.0, 710.0), narrow(-2.0, 2.0);
	int64_t worst = 0;
	double worst_x = 0;
	for (int i = 0; i < 2'000'000; ++i) {
		const double x = i % 2 ? wide(random) : narrow(random);
		const double expected = std::exp(x);
		const int64_t distance = ulp_distance(fast_exp(x), expected);
		if (distance > worst) worst = distance, worst_x = x;
	}
	EXPECT_LE(worst, 2) << "at x = " << worst_x;
}

TEST(FastExp, ExactWhereExpIsExactAndTheLimitsOfTheLibrary) {
	EXPECT_EQ(fast_exp(0.0), 1.0);
	EXPECT_EQ(fast_exp(-0.0), 1.0);
	EXPECT_EQ(fast_exp(-1000.0), 0.0);
	EXPECT_EQ(fast_exp(-std::numeric_limits<double>::infinity()), 0.0);
	EXPECT_EQ(fast_exp(710.0), std::numeric_limits<double>::infinity());
	EXPECT_EQ(fast_exp(std::numeric_limits<double>::infinity()), std::numeric_limits<double>::infinity());
	EXPECT_TRUE(std::isnan(fast_exp(std::numeric_limits<double>::quiet_NaN())));
	// Subnormal results and the largest finite one.
	for (double x : {-709.0, -720.5, -740.0, -745.1, 709.78})
		EXPECT_LE(ulp_distance(fast_exp(x), std::exp(x)), 2) << x;
	EXPECT_GT(fast_exp(-745.1), 0.0);
	EXPECT_TRUE(std::isfinite(fast_exp(709.78)));
}

} // namespace
} // namespace weld
