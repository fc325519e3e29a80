// linalg::max_weight_assignment: known optima, brute force over every permutation for small n,
// ties, bad input, and a large problem against greedy.
#include "linalg/assignment.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

namespace weld::linalg {
namespace {

double value(const std::vector<double>& s, const std::vector<int64_t>& p) {
	const auto n = p.size();
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += s[i * n + static_cast<size_t>(p[i])];
	return sum;
}

bool is_permutation(const std::vector<int64_t>& p, size_t n) {
	if (p.size() != n) return false;
	std::vector<int64_t> sorted = p;
	std::sort(sorted.begin(), sorted.end());
	for (size_t i = 0; i < n; i++)
		if (sorted[i] != static_cast<int64_t>(i)) return false;
	return true;
}

TEST(Assignment, HandExamples) {
	// Rows 0, 1, 2 best take columns 2, 0, 1: 9 + 8 + 7 = 24 (greedy by row takes 9, then 8, then 1).
	const std::vector<double> a = {1, 2, 9, 8, 3, 2, 1, 7, 2};
	EXPECT_EQ(max_weight_assignment(a, 3), (std::vector<int64_t>{2, 0, 1}));
	// Greedy picks the 10 and is forced into -100; the optimum avoids it: 9 + 9 = 18.
	const std::vector<double> b = {10, 9, 9, -100};
	EXPECT_EQ(max_weight_assignment(b, 2), (std::vector<int64_t>{1, 0}));
	// Negative scores are maximized as well.
	const std::vector<double> c = {-5, -1, -3, -4};
	EXPECT_EQ(max_weight_assignment(c, 2), (std::vector<int64_t>{1, 0}));
}

TEST(Assignment, MatchesBruteForceUpToSeven) {
	std::mt19937_64 rng(12345);
	std::normal_distribution<double> normal;
	for (int64_t n = 1; n <= 7; n++)
		for (int trial = 0; trial < 20; trial++) {
			std::vector<double> s(static_cast<size_t>(n * n));
			for (auto& x : s)
				x = trial % 2 ? normal(rng) : std::round(normal(rng) * 3); // integers: many ties
			const auto p = max_weight_assignment(s, n);
			ASSERT_TRUE(is_permutation(p, static_cast<size_t>(n)));
			std::vector<int64_t> q(static_cast<size_t>(n));
			std::iota(q.begin(), q.end(), 0);
			double best = -std::numeric_limits<double>::infinity();
			do
				best = std::max(best, value(s, q));
			while (std::next_permutation(q.begin(), q.end()));
			EXPECT_NEAR(value(s, p), best, 1e-9) << "n " << n << " trial " << trial;
		}
}

TEST(Assignment, EmptyAndSingle) {
	EXPECT_TRUE(max_weight_assignment({}, 0).empty());
	const std::vector<double> one = {-3.5};
	EXPECT_EQ(max_weight_assignment(one, 1), (std::vector<int64_t>{0}));
}

TEST(Assignment, TiesAreBrokenDeterministically) {
	const std::vector<double> flat(16, 1.0);
	EXPECT_EQ(max_weight_assignment(flat, 4), (std::vector<int64_t>{0, 1, 2, 3}));
	// Two optimal assignments of equal value: the same one every time.
	const std::vector<double> two = {1, 1, 0, 1, 1, 0, 0, 0, 5};
	const auto p = max_weight_assignment(two, 3);
	EXPECT_EQ(value(two, p), 7);
	for (int i = 0; i < 5; i++)
		EXPECT_EQ(max_weight_assignment(two, 3), p);
}

TEST(Assignment, BadInputIsAnError) {
	const std::vector<double> three(3, 1.0);
	EXPECT_THROW(max_weight_assignment(three, 2), Error);
	EXPECT_THROW(max_weight_assignment(three, -1), Error);
	std::vector<double> s(4, 1.0);
	s[2] = std::numeric_limits<double>::quiet_NaN();
	EXPECT_THROW(max_weight_assignment(s, 2), Error);
	s[2] = std::numeric_limits<double>::infinity();
	try {
		max_weight_assignment(s, 2);
		FAIL() << "no error";
	} catch (const Error& e) {
		EXPECT_NE(std::string(e.what()).find("score (1, 0) is not finite"), std::string::npos) << e.what();
	}
}

TEST(Assignment, LargeIsAPermutationAtLeastAsGoodAsGreedy) {
	const int64_t n = 300;
	std::mt19937_64 rng(7);
	std::uniform_real_distribution<double> uniform(-1, 1);
	std::vector<double> s(static_cast<size_t>(n * n));
	for (auto& x : s)
		x = uniform(rng);
	const auto p = max_weight_assignment(s, n);
	ASSERT_TRUE(is_permutation(p, static_cast<size_t>(n)));
	// Greedy: the largest remaining entry, repeatedly.
	std::vector<size_t> order(s.size());
	std::iota(order.begin(), order.end(), 0);
	std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return s[a] > s[b]; });
	std::vector<char> row_used(n), col_used(n);
	std::vector<int64_t> greedy(static_cast<size_t>(n));
	for (size_t k : order) {
		const size_t r = k / n, c = k % n;
		if (row_used[r] || col_used[c]) continue;
		row_used[r] = col_used[c] = 1;
		greedy[r] = static_cast<int64_t>(c);
	}
	std::printf("n = 300: optimum %.4f, greedy %.4f\n", value(s, p), value(s, greedy));
	EXPECT_GE(value(s, p), value(s, greedy));
	EXPECT_GT(value(s, p), 0.9 * n); // uniform(-1, 1): the optimum is near n
}

} // namespace
} // namespace weld::linalg
