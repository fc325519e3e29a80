// The linear-algebra layer: SVD properties, randomized SVD accuracy on a known spectrum,
// determinism and the polar factor (hand cases where the answer is known in closed form).
#include "linalg/linalg.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <cmath>

namespace weld::linalg {
namespace {

template <class T> Matrix<T> normal_matrix(size_t rows, size_t cols, uint64_t key) {
	Matrix<T> m(rows, cols);
	for (size_t i = 0; i < m.data.size(); ++i)
		m.data[i] = static_cast<T>(random_normal(key, i));
	return m;
}

template <class T> double max_abs_diff(const Matrix<T>& a, const Matrix<T>& b) {
	double worst = 0;
	for (size_t i = 0; i < a.data.size(); ++i)
		worst = std::max(worst, std::abs(static_cast<double>(a.data[i]) - b.data[i]));
	return worst;
}

template <class T> Matrix<T> identity(size_t n) {
	Matrix<T> m(n, n);
	for (size_t i = 0; i < n; ++i)
		m(i, i) = 1;
	return m;
}

template <class T> Matrix<T> reconstruct(const Svd<T>& s) {
	Matrix<T> us = s.U;
	for (size_t r = 0; r < us.rows; ++r)
		for (size_t c = 0; c < us.cols; ++c)
			us(r, c) *= s.S[c];
	return matmul(us, false, s.Vt, false);
}

template <class T> void expect_svd_properties(const Matrix<T>& a, double tolerance) {
	const Svd<T> s = svd(a);
	const size_t k = std::min(a.rows, a.cols);
	ASSERT_EQ(s.U.rows, a.rows);
	ASSERT_EQ(s.U.cols, k);
	ASSERT_EQ(s.Vt.rows, k);
	ASSERT_EQ(s.Vt.cols, a.cols);
	EXPECT_LT(max_abs_diff(reconstruct(s), a), tolerance);
	EXPECT_LT(max_abs_diff(matmul(s.U, true, s.U, false), identity<T>(k)), tolerance);
	EXPECT_LT(max_abs_diff(matmul(s.Vt, false, s.Vt, true), identity<T>(k)), tolerance);
	for (size_t i = 0; i < k; ++i) {
		EXPECT_GE(s.S[i], 0);
		if (i > 0) {
			EXPECT_GE(s.S[i - 1], s.S[i]);
		}
	}
}

TEST(LinalgSvdTest, TallAndWideDoubleMatricesReconstruct) {
	expect_svd_properties(normal_matrix<double>(7, 4, 1), 1e-12);
	expect_svd_properties(normal_matrix<double>(3, 8, 2), 1e-12);
}

TEST(LinalgSvdTest, FloatMatricesReconstruct) {
	expect_svd_properties(normal_matrix<float>(9, 6, 3), 1e-5);
	expect_svd_properties(normal_matrix<float>(5, 11, 4), 1e-5);
}

// diag(1, 3) has singular values 3, 1 (sorted), with singular vectors ±e2, ±e1.
TEST(LinalgSvdTest, HandDiagonalCase) {
	MatrixD a(2, 2);
	a(0, 0) = 1;
	a(1, 1) = 3;
	const SvdD s = svd(a);
	EXPECT_NEAR(s.S[0], 3, 1e-14);
	EXPECT_NEAR(s.S[1], 1, 1e-14);
	EXPECT_NEAR(std::abs(s.U(1, 0)), 1, 1e-14);
	EXPECT_NEAR(std::abs(s.Vt(0, 1)), 1, 1e-14);
}

TEST(LinalgSvdTest, EmptyMatrixHasNoTriplets) {
	const SvdD s = svd(MatrixD(0, 3));
	EXPECT_TRUE(s.S.empty());
}

TEST(LinalgSvdTest, NonFiniteInputThrows) {
	MatrixD a(2, 2);
	a(0, 1) = std::nan("");
	EXPECT_ANY_THROW(svd(a));
}

// A = U0 diag(0.7^i) V0ᵀ (300 × 280): the randomized path must find the top 10 singular values
// and the same subspace as the construction.
TEST(LinalgSvdTest, RandomizedMatchesFullOnDecayingSpectrum) {
	const size_t m = 300, n = 280, r = 10;
	const MatrixD u0 = orthonormal_columns(normal_matrix<double>(m, n, 5));
	const MatrixD v0 = orthonormal_columns(normal_matrix<double>(n, n, 6));
	MatrixD us = u0;
	for (size_t row = 0; row < m; ++row)
		for (size_t c = 0; c < n; ++c)
			us(row, c) *= std::pow(0.7, static_cast<double>(c));
	const MatrixD a = matmul(us, false, v0, true);
	SvdPath path = SvdPath::Full;
	const SvdD s = truncated_svd(a, r, 42, &path);
	EXPECT_EQ(path, SvdPath::Randomized);
	EXPECT_EQ(to_string(path), "randomized SVD");
	ASSERT_EQ(s.S.size(), r);
	for (size_t i = 0; i < r; ++i)
		EXPECT_NEAR(s.S[i], std::pow(0.7, static_cast<double>(i)), 1e-6) << i;
	// Subspace angle: ‖U_rᵀ U0_r‖_F² = r when the spans agree.
	MatrixD u0r(m, r);
	for (size_t row = 0; row < m; ++row)
		for (size_t c = 0; c < r; ++c)
			u0r(row, c) = u0(row, c);
	const MatrixD overlap = matmul(s.U, true, u0r, false);
	double fro = 0;
	for (double v : overlap.data)
		fro += v * v;
	EXPECT_NEAR(fro, static_cast<double>(r), 1e-6);
}

TEST(LinalgSvdTest, SmallProblemsTakeTheFullPath) {
	SvdPath path = SvdPath::Randomized;
	const SvdF s = truncated_svd(normal_matrix<float>(20, 30, 7), 5, 1, &path);
	EXPECT_EQ(path, SvdPath::Full);
	EXPECT_EQ(s.S.size(), 5u);
	EXPECT_EQ(s.U.cols, 5u);
	EXPECT_EQ(s.Vt.rows, 5u);
}

// The top triplets from the Gram matrix equal the full SVD's (up to each pair's sign), on both
// sides of the Gram choice, and k = 0 singular values give zero vectors instead of NaN.
TEST(LinalgSvdTest, TopTripletsFromGramMatchTheFullSvd) {
	for (const auto& [rows, cols] : {std::pair<size_t, size_t>{60, 40}, {40, 60}}) {
		const MatrixD a = normal_matrix<double>(rows, cols, 5);
		const SvdD full = svd(a), top = top_singular_triplets(a, 5);
		ASSERT_EQ(top.S.size(), 5u);
		for (size_t k = 0; k < 5; ++k) {
			EXPECT_NEAR(top.S[k], full.S[k], 1e-10 * full.S[0]);
			double u_dot = 0, v_dot = 0;
			for (size_t r = 0; r < rows; ++r)
				u_dot += top.U(r, k) * full.U(r, k);
			for (size_t c = 0; c < cols; ++c)
				v_dot += top.Vt(k, c) * full.Vt(k, c);
			EXPECT_NEAR(std::abs(u_dot), 1.0, 1e-9) << rows << "x" << cols << " k " << k;
			EXPECT_NEAR(u_dot * v_dot, 1.0, 1e-9); // the same sign on both sides
		}
	}
	MatrixD rank_one(4, 6);
	for (size_t c = 0; c < 6; ++c)
		rank_one(0, c) = 1;
	const SvdD top = top_singular_triplets(rank_one, 2);
	EXPECT_NEAR(top.S[0], std::sqrt(6.0), 1e-12);
	EXPECT_NEAR(top.S[1], 0.0, 1e-7);
	for (double v : top.Vt.data)
		EXPECT_TRUE(std::isfinite(v));
}

TEST(LinalgSvdTest, RandomizedIsDeterministic) {
	const MatrixF a = normal_matrix<float>(300, 260, 8);
	const SvdF x = randomized_svd(a, 8, 99), y = randomized_svd(a, 8, 99);
	EXPECT_EQ(x.S, y.S);
	EXPECT_EQ(x.U.data, y.U.data);
	EXPECT_EQ(x.Vt.data, y.Vt.data);
}

// polar([[2, 0], [0, 3]]) = I; polar([[0, 2], [-1, 0]]) = [[0, 1], [-1, 0]] (a rotation times
// the positive diagonal diag(1, 2)).
TEST(LinalgPolarTest, HandCases) {
	MatrixD a(2, 2);
	a(0, 0) = 2;
	a(1, 1) = 3;
	EXPECT_LT(max_abs_diff(polar_factor(a), identity<double>(2)), 1e-14);
	MatrixD b(2, 2), expected(2, 2);
	b(0, 1) = 2;
	b(1, 0) = -1;
	expected(0, 1) = 1;
	expected(1, 0) = -1;
	EXPECT_LT(max_abs_diff(polar_factor(b), expected), 1e-14);
}

TEST(LinalgPolarTest, ColumnsAreOrthonormalAndOrthonormalInputIsFixed) {
	const MatrixD p = polar_factor(normal_matrix<double>(8, 5, 9));
	EXPECT_LT(max_abs_diff(matmul(p, true, p, false), identity<double>(5)), 1e-12);
	EXPECT_LT(max_abs_diff(polar_factor(p), p), 1e-12);
	const MatrixD wide = polar_factor(normal_matrix<double>(3, 7, 10));
	EXPECT_LT(max_abs_diff(matmul(wide, false, wide, true), identity<double>(3)), 1e-12);
}

TEST(LinalgMatmulTest, HandProductWithTransposes) {
	// [[1, 2], [3, 4]] · [[5], [6]] = [[17], [39]]; (Aᵀ)·B = [[23], [34]].
	MatrixD a(2, 2), b(2, 1);
	a.data = {1, 2, 3, 4};
	b.data = {5, 6};
	EXPECT_EQ(matmul(a, false, b, false).data, (std::vector<double>{17, 39}));
	EXPECT_EQ(matmul(a, true, b, false).data, (std::vector<double>{23, 34}));
	EXPECT_EQ(matmul(b, true, a, true).data, (std::vector<double>{17, 39}));
}

TEST(LinalgRandomTest, NormalDrawsHaveUnitVariance) {
	double sum = 0, sq = 0;
	const int n = 20000;
	for (int i = 0; i < n; ++i) {
		const double x = random_normal(123, static_cast<uint64_t>(i));
		sum += x;
		sq += x * x;
	}
	EXPECT_NEAR(sum / n, 0, 0.03);
	EXPECT_NEAR(sq / n, 1, 0.05);
}

} // namespace
} // namespace weld::linalg

namespace weld::linalg {
namespace {

// FloatGramSums against AᵀA in double (products of floats are exact in double): 830 rows in two
// panels, runs of 256 and partial ones, each entry within float32's worst-case bound for a dot
// product of one run, kRunRows · 2⁻²⁴ · |a_i| |a_j| (its rounding does not grow with the rows);
// a second sum sharing the run gets its own rows only.
TEST(LinalgGramTest, FloatGramSumsAreAᵀAWithinOneRunsRounding) {
	const size_t n = 37;
	const MatrixF first = normal_matrix<float>(700, n, 11), second = normal_matrix<float>(130, n, 12);
	FloatGramSums sums(2, n);
	sums.add(0, first);
	sums.add(1, second);
	sums.add(0, second);
	const MatrixD gram = sums.take(0), other = sums.take(1);
	std::vector<double> norms(n, 0.0);
	for (const MatrixF* part : {&first, &second})
		for (size_t r = 0; r < part->rows; ++r)
			for (size_t c = 0; c < n; ++c)
				norms[c] += static_cast<double>((*part)(r, c)) * (*part)(r, c);
	const double run_bound = FloatGramSums::kRunRows * std::ldexp(1.0, -24);
	for (size_t i = 0; i < n; ++i)
		for (size_t j = i; j < n; ++j) {
			double exact = 0, exact_second = 0;
			for (const MatrixF* part : {&first, &second})
				for (size_t r = 0; r < part->rows; ++r)
					exact += static_cast<double>((*part)(r, i)) * (*part)(r, j);
			for (size_t r = 0; r < second.rows; ++r)
				exact_second += static_cast<double>(second(r, i)) * second(r, j);
			EXPECT_LE(std::abs(gram(i, j) - exact), run_bound * std::sqrt(norms[i] * norms[j])) << i << ", " << j;
			EXPECT_LE(std::abs(other(i, j) - exact_second), run_bound * std::sqrt(norms[i] * norms[j]))
			    << i << ", " << j;
		}
	EXPECT_THROW(FloatGramSums(1, n + 1).add(0, first), Error);
}

} // namespace
} // namespace weld::linalg

namespace weld::linalg {
namespace {

// The top 20 of 120 eigenpairs by MRRR and by bisection with inverse iteration (the fallback),
// on a spectrum whose cut falls inside a cluster (1 four times, then 0.5 24 times): both give
// eigenpairs (residual, orthonormal vectors) with the values of the full solver.
TEST(LinalgEigenTest, SubsetSolversGiveTheTopEigenpairs) {
	const size_t n = 120, count = 20;
	const MatrixD q = orthonormal_columns(normal_matrix<double>(n, n, 21));
	std::vector<double> spectrum(n);
	for (size_t i = 0; i < n; ++i)
		spectrum[i] = (i >= 70 && i < 90) ? 0.5 : std::ldexp(1.0, -static_cast<int>(i % 30)); // 20 equal
	MatrixD scaled = q;
	for (size_t r = 0; r < n; ++r)
		for (size_t c = 0; c < n; ++c)
			scaled(r, c) *= spectrum[c];
	const MatrixD a = matmul(scaled, false, q, true);
	const Eigenpairs all = top_eigenpairs(a, n);
	for (const Eigensolver solver : {Eigensolver::Mrrr, Eigensolver::Bisection}) {
		const Eigenpairs top = top_eigenpairs(a, count, solver);
		ASSERT_EQ(top.values.size(), count);
		for (size_t j = 0; j < count; ++j)
			EXPECT_NEAR(top.values[j], all.values[j], 1e-13) << j;
		MatrixD residual = matmul(a, false, top.vectors, false);
		for (size_t r = 0; r < n; ++r)
			for (size_t j = 0; j < count; ++j)
				residual(r, j) -= top.values[j] * top.vectors(r, j);
		EXPECT_LT(max_abs_diff(residual, MatrixD(n, count)), 1e-12);
		EXPECT_LT(max_abs_diff(matmul(top.vectors, true, top.vectors, false), identity<double>(count)), 1e-12);
	}
}

} // namespace
} // namespace weld::linalg
