#include "tensor/kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace weld {
namespace {

std::vector<float> top_k(std::vector<float> values, size_t k) {
	keep_top_k_by_magnitude(values, k);
	return values;
}

TEST(TensorKernelsTest, TopKKeepsLargestMagnitudes) {
	const std::vector<float> v = {1.0f, -3.0f, 2.0f, -2.0f, 0.5f};
	EXPECT_EQ(top_k(v, 1), (std::vector<float>{0, -3, 0, 0, 0}));
	// |2| and |-2| tie for second place: the lower index wins.
	EXPECT_EQ(top_k(v, 2), (std::vector<float>{0, -3, 2, 0, 0}));
	EXPECT_EQ(top_k(v, 3), (std::vector<float>{0, -3, 2, -2, 0}));
	EXPECT_EQ(top_k(v, 4), (std::vector<float>{1, -3, 2, -2, 0}));
}

TEST(TensorKernelsTest, TopKTiesInIndexOrder) {
	EXPECT_EQ(top_k({1, -1, 1, -1}, 2), (std::vector<float>{1, -1, 0, 0}));
	EXPECT_EQ(top_k({0.5f, 1, -1, 1, 3}, 3), (std::vector<float>{0, 1, -1, 0, 3}));
}

TEST(TensorKernelsTest, TopKEdgeCounts) {
	const std::vector<float> v = {1, -3, 2};
	EXPECT_EQ(top_k(v, 0), (std::vector<float>{0, 0, 0}));
	EXPECT_EQ(top_k(v, 3), v);
	EXPECT_EQ(top_k(v, 100), v);
	EXPECT_EQ(top_k({}, 0), std::vector<float>{});
}

TEST(TensorKernelsTest, TopKMatchesSortOnManyValues) {
	// Quantized values make many ties; compare with a stable sort by descending magnitude.
	std::vector<float> v(5000);
	for (size_t i = 0; i < v.size(); ++i)
		v[i] = static_cast<float>(static_cast<int>((i * 7919) % 201) - 100) / 4.0f;
	const size_t k = 1234;
	std::vector<size_t> order(v.size());
	std::iota(order.begin(), order.end(), 0);
	std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return std::fabs(v[a]) > std::fabs(v[b]); });
	std::vector<float> expected(v.size(), 0.0f);
	for (size_t i = 0; i < k; ++i)
		expected[order[i]] = v[order[i]];
	EXPECT_EQ(top_k(v, k), expected);
}

TEST(TensorKernelsTest, L1Norm) {
	const std::vector<float> v = {1.5f, -2.0f, 0.0f, -0.25f};
	EXPECT_DOUBLE_EQ(l1_norm(v), 3.75);
	EXPECT_DOUBLE_EQ(l1_norm({}), 0.0);
}

TEST(TensorKernelsTest, RandomIsDeterministicAndKeyed) {
	const uint64_t key = random_stream_key(42, "model.layers.0.mlp.up_proj.weight", 1);
	EXPECT_EQ(key, random_stream_key(42, "model.layers.0.mlp.up_proj.weight", 1));
	EXPECT_NE(key, random_stream_key(43, "model.layers.0.mlp.up_proj.weight", 1));
	EXPECT_NE(key, random_stream_key(42, "model.layers.1.mlp.up_proj.weight", 1));
	EXPECT_NE(key, random_stream_key(42, "model.layers.0.mlp.up_proj.weight", 2));
	EXPECT_EQ(random_uniform(key, 7), random_uniform(key, 7));
	EXPECT_NE(random_uniform(key, 7), random_uniform(key, 8));
	EXPECT_NE(random_uniform(key, 7), random_uniform(key + 1, 7));
}

TEST(TensorKernelsTest, RandomUniformRangeAndMean) {
	const uint64_t key = random_stream_key(0, "t", 0);
	const size_t n = 100000;
	double sum = 0, lo = 1, hi = 0;
	size_t below_tenth = 0;
	for (size_t i = 0; i < n; ++i) {
		const double u = random_uniform(key, i);
		ASSERT_GE(u, 0.0);
		ASSERT_LT(u, 1.0);
		sum += u;
		lo = std::min(lo, u);
		hi = std::max(hi, u);
		below_tenth += u < 0.1;
	}
	// Standard error of the mean is 0.29/sqrt(n) ~ 0.0009.
	EXPECT_NEAR(sum / n, 0.5, 0.005);
	EXPECT_NEAR(static_cast<double>(below_tenth) / n, 0.1, 0.005);
	EXPECT_LT(lo, 0.001);
	EXPECT_GT(hi, 0.999);
}

// ---- task-vector group: Breadcrumbs band, DELLA MagPrune ----

std::vector<float> band(std::vector<float> values, size_t skip, size_t keep) {
	keep_magnitude_band(values, skip, keep);
	return values;
}

TEST(TaskVectorKernelsTest, MagnitudeBand) {
	// Largest first (equal magnitudes: lower index first): -3 (1), 2 (2), -2 (3), 1 (0), 0.5 (4).
	const std::vector<float> v = {1.0f, -3.0f, 2.0f, -2.0f, 0.5f};
	EXPECT_EQ(band(v, 1, 2), (std::vector<float>{0, 0, 2, -2, 0}));
	EXPECT_EQ(band(v, 0, 2), (std::vector<float>{0, -3, 2, 0, 0}));
	EXPECT_EQ(band(v, 2, 1), (std::vector<float>{0, 0, 0, -2, 0}));
	EXPECT_EQ(band(v, 2, 100), (std::vector<float>{1, 0, 0, -2, 0.5f}));
	EXPECT_EQ(band(v, 5, 1), (std::vector<float>{0, 0, 0, 0, 0}));
	EXPECT_EQ(band(v, 1, 0), (std::vector<float>{0, 0, 0, 0, 0}));
	EXPECT_EQ(band(v, 0, 5), v);
	EXPECT_EQ(band({}, 1, 1), std::vector<float>{});
}

TEST(TaskVectorKernelsTest, MagnitudeBandMatchesSortOnManyValues) {
	std::vector<float> v(5000);
	for (size_t i = 0; i < v.size(); ++i)
		v[i] = static_cast<float>(static_cast<int>((i * 7919) % 201) - 100) / 4.0f;
	const size_t skip = 321, keep = 1234;
	std::vector<size_t> order(v.size());
	std::iota(order.begin(), order.end(), 0);
	std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return std::fabs(v[a]) > std::fabs(v[b]); });
	std::vector<float> expected(v.size(), 0.0f);
	for (size_t i = skip; i < skip + keep; ++i)
		expected[order[i]] = v[order[i]];
	EXPECT_EQ(band(v, skip, keep), expected);
}

TEST(TaskVectorKernelsTest, DellaMagpruneProbabilities) {
	// Rows [4, 1, 2] (ranks 2, 0, 1): with density 0.5 and epsilon 0.5 - 1e-9 the smallest
	// survives with p ~ 0 and the largest with p ~ 1; the middle with p = 0.5.
	const size_t rows = 2000;
	std::vector<float> v(3 * rows);
	for (size_t r = 0; r < rows; ++r) {
		v[3 * r] = 4;
		v[3 * r + 1] = -1;
		v[3 * r + 2] = 2;
	}
	della_magprune(v, 3, 0.5, 0.5 - 1e-9, random_stream_key(1, "t", 0));
	size_t large = 0, small = 0, middle = 0;
	for (size_t r = 0; r < rows; ++r) {
		large += v[3 * r] == 4;
		small += v[3 * r + 1] == -1;
		middle += v[3 * r + 2] == 2;
	}
	EXPECT_EQ(large, rows);
	EXPECT_EQ(small, 0u);
	// Binomial(2000, 0.5): sd ~ 22.
	EXPECT_NEAR(static_cast<double>(middle), 1000, 120);
	// One-element rows use p = density: here 0.25 (sd of the count ~ 19 over 2000).
	std::vector<float> singles(2000, 1.0f);
	della_magprune(singles, 1, 0.25, 0.2, random_stream_key(2, "t", 0));
	EXPECT_NEAR(static_cast<double>(std::count(singles.begin(), singles.end(), 1.0f)), 500, 100);
}

} // namespace
} // namespace weld
