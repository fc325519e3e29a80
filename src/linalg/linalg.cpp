#include "linalg/linalg.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <algorithm>
#include <cblas.h>
#include <cmath>
#include <fmt/format.h>
#include <lapacke.h>
#include <numbers>

namespace weld::linalg {
namespace {

// OpenBLAS's own threads would make sums depend on the split, and weld already runs one
// tensor per thread: set once, before the first BLAS call.
void single_threaded_blas() {
	static const bool done = [] {
		openblas_set_num_threads(1);
		return true;
	}();
	(void)done;
}

lapack_int as_int(size_t n) {
	if (n > static_cast<size_t>(INT32_MAX)) throw Error(fmt::format("matrix dimension {} is too large for LAPACK", n));
	return static_cast<lapack_int>(n);
}

void check_info(lapack_int info, const char* routine) {
	if (info != 0)
		throw Error(fmt::format("{} failed (LAPACK info {}); the matrix may hold NaN or infinity", routine, info));
}

// Precision dispatch for the few BLAS/LAPACK routines used here.
// C = op(A) op(B) + beta C
void gemm(bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
          float beta = 0) {
	cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, 1.0f, a, lda, b,
	            ldb, beta, c, n);
}
void gemm(bool ta, bool tb, int m, int n, int k, const double* a, int lda, const double* b, int ldb, double* c,
          double beta = 0) {
	cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, 1.0, a, lda, b,
	            ldb, beta, c, n);
}
lapack_int gesdd(int m, int n, float* a, float* s, float* u, float* vt, int k) {
	return LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', m, n, a, n, s, u, k, vt, n);
}
lapack_int gesdd(int m, int n, double* a, double* s, double* u, double* vt, int k) {
	return LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, n, a, n, s, u, k, vt, n);
}
lapack_int gesdd_values(int m, int n, float* a, float* s) {
	return LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'N', m, n, a, n, s, nullptr, m, nullptr, n); // ldu, ldvt unused but checked
}
lapack_int gesdd_values(int m, int n, double* a, double* s) {
	return LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'N', m, n, a, n, s, nullptr, m, nullptr, n);
}
lapack_int geqrf(int m, int n, float* a, float* tau) {
	return LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, m, n, a, n, tau);
}
lapack_int geqrf(int m, int n, double* a, double* tau) {
	return LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, m, n, a, n, tau);
}
lapack_int orgqr(int m, int n, float* a, const float* tau) {
	return LAPACKE_sorgqr(LAPACK_ROW_MAJOR, m, n, n, a, n, tau);
}
lapack_int orgqr(int m, int n, double* a, const double* tau) {
	return LAPACKE_dorgqr(LAPACK_ROW_MAJOR, m, n, n, a, n, tau);
}

// The first `rank` triplets of s.
template <class T> Svd<T> truncate(Svd<T> s, size_t rank) {
	if (rank >= s.S.size()) return s;
	Svd<T> out{Matrix<T>(s.U.rows, rank), std::vector<T>(s.S.begin(), s.S.begin() + static_cast<ptrdiff_t>(rank)),
	           Matrix<T>(rank, s.Vt.cols)};
	for (size_t r = 0; r < s.U.rows; ++r)
		std::copy_n(s.U.data.data() + r * s.U.cols, rank, out.U.data.data() + r * rank);
	std::copy_n(s.Vt.data.begin(), rank * s.Vt.cols, out.Vt.data.begin());
	return out;
}

} // namespace

std::string_view to_string(SvdPath path) {
	return path == SvdPath::Full ? "full SVD" : "randomized SVD";
}

double random_normal(uint64_t key, uint64_t index) {
	// Box–Muller on two uniforms of the stream; 1 - u keeps the log argument in (0, 1].
	const double u1 = 1.0 - random_uniform(key, 2 * index), u2 = random_uniform(key, 2 * index + 1);
	return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

template <class T> Matrix<T> matmul(const Matrix<T>& a, bool transpose_a, const Matrix<T>& b, bool transpose_b) {
	const size_t m = transpose_a ? a.cols : a.rows, k = transpose_a ? a.rows : a.cols;
	const size_t kb = transpose_b ? b.cols : b.rows, n = transpose_b ? b.rows : b.cols;
	assert(k == kb && "matmul: inner dimensions differ");
	(void)kb;
	Matrix<T> c(m, n);
	if (m == 0 || n == 0 || k == 0) return c;
	single_threaded_blas();
	gemm(transpose_a, transpose_b, as_int(m), as_int(n), as_int(k), a.data.data(), as_int(a.cols), b.data.data(),
	     as_int(b.cols), c.data.data());
	return c;
}

template <class T>
void add_product(Matrix<T>& c, const Matrix<T>& a, bool transpose_a, const Matrix<T>& b, bool transpose_b) {
	const size_t m = transpose_a ? a.cols : a.rows, k = transpose_a ? a.rows : a.cols;
	const size_t n = transpose_b ? b.rows : b.cols;
	assert((transpose_b ? b.cols : b.rows) == k && c.rows == m && c.cols == n && "add_product: shapes differ");
	if (m == 0 || n == 0 || k == 0) return;
	single_threaded_blas();
	gemm(transpose_a, transpose_b, as_int(m), as_int(n), as_int(k), a.data.data(), as_int(a.cols), b.data.data(),
	     as_int(b.cols), c.data.data(), T(1));
}

template <class T> Svd<T> svd(const Matrix<T>& a) {
	const size_t k = std::min(a.rows, a.cols);
	Svd<T> out{Matrix<T>(a.rows, k), std::vector<T>(k), Matrix<T>(k, a.cols)};
	if (k == 0) return out;
	single_threaded_blas();
	Matrix<T> work = a; // gesdd destroys its input
	check_info(gesdd(as_int(a.rows), as_int(a.cols), work.data.data(), out.S.data(), out.U.data.data(),
	                 out.Vt.data.data(), as_int(k)),
	           "SVD (gesdd)");
	return out;
}

template <class T> std::vector<T> singular_values(const Matrix<T>& a) {
	std::vector<T> s(std::min(a.rows, a.cols));
	if (s.empty()) return s;
	single_threaded_blas();
	Matrix<T> work = a; // gesdd destroys its input
	check_info(gesdd_values(as_int(a.rows), as_int(a.cols), work.data.data(), s.data()), "singular values (gesdd)");
	return s;
}

template <class T> Matrix<T> orthonormal_columns(const Matrix<T>& a) {
	assert(a.rows >= a.cols);
	Matrix<T> q = a;
	if (a.cols == 0) return q;
	single_threaded_blas();
	std::vector<T> tau(a.cols);
	check_info(geqrf(as_int(a.rows), as_int(a.cols), q.data.data(), tau.data()), "QR (geqrf)");
	check_info(orgqr(as_int(a.rows), as_int(a.cols), q.data.data(), tau.data()), "QR (orgqr)");
	return q;
}

template <class T>
Svd<T> randomized_svd(const Matrix<T>& a, size_t rank, uint64_t key, size_t oversample, int power_iterations) {
	const size_t width = std::min(rank + oversample, std::min(a.rows, a.cols));
	Matrix<T> omega(a.cols, width);
	for (size_t i = 0; i < omega.data.size(); ++i)
		omega.data[i] = static_cast<T>(random_normal(key, i));
	// Range finder: Q spans A·Ω, sharpened by power iterations (Aᵀ then A), each re-orthonormalised.
	Matrix<T> q = orthonormal_columns(matmul(a, false, omega, false));
	for (int i = 0; i < power_iterations; ++i) {
		const Matrix<T> z = orthonormal_columns(matmul(a, true, q, false));
		q = orthonormal_columns(matmul(a, false, z, false));
	}
	Svd<T> small = svd(matmul(q, true, a, false)); // B = Qᵀ A, width × n
	small.U = matmul(q, false, small.U, false);
	return truncate(std::move(small), rank);
}

template <class T> Svd<T> truncated_svd(const Matrix<T>& a, size_t rank, uint64_t key, SvdPath* path) {
	constexpr size_t kOversample = 10;
	const size_t smaller = std::min(a.rows, a.cols);
	const bool randomized = smaller >= 256 && rank + kOversample < smaller / 4;
	if (path) *path = randomized ? SvdPath::Randomized : SvdPath::Full;
	if (randomized) return randomized_svd(a, rank, key, kOversample, 2);
	return truncate(svd(a), rank);
}

template <class T> Matrix<T> polar_factor(const Matrix<T>& a) {
	const Svd<T> s = svd(a);
	return matmul(s.U, false, s.Vt, false);
}

#define WELD_LINALG_INSTANTIATE(T)                                                                                     \
	template Matrix<T> matmul(const Matrix<T>&, bool, const Matrix<T>&, bool);                                         \
	template void add_product(Matrix<T>&, const Matrix<T>&, bool, const Matrix<T>&, bool);                             \
	template Svd<T> svd(const Matrix<T>&);                                                                             \
	template std::vector<T> singular_values(const Matrix<T>&);                                                         \
	template Matrix<T> orthonormal_columns(const Matrix<T>&);                                                          \
	template Svd<T> randomized_svd(const Matrix<T>&, size_t, uint64_t, size_t, int);                                   \
	template Svd<T> truncated_svd(const Matrix<T>&, size_t, uint64_t, SvdPath*);                                       \
	template Matrix<T> polar_factor(const Matrix<T>&);
WELD_LINALG_INSTANTIATE(float)
WELD_LINALG_INSTANTIATE(double)
#undef WELD_LINALG_INSTANTIATE

} // namespace weld::linalg

namespace weld::linalg {

void add_gram(MatrixD& c, const MatrixD& a) {
	if (c.rows != a.cols || c.cols != a.cols) throw Error("add_gram: C must be square with A's column count");
	if (a.rows == 0) return;
	single_threaded_blas();
	cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, as_int(a.cols), as_int(a.rows), 1.0, a.data.data(),
	            as_int(a.cols), 1.0, c.data.data(), as_int(c.cols));
}

void FloatGramSums::add(size_t index, const MatrixF& rows) {
	MatrixD& sum = sums_.at(index);
	const size_t n = sum.rows;
	if (rows.cols != n) throw Error("FloatGramSums: the rows must have as many columns as the sums");
	single_threaded_blas();
	for (size_t first = 0; first < rows.rows; first += kRunRows) {
		const size_t count = std::min(kRunRows, rows.rows - first);
		cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, as_int(n), as_int(count), 1.0f, &rows.data[first * n],
		            as_int(n), 0.0f, run_.data(), as_int(n));
		for (size_t r = 0; r < n; ++r) {
			double* total = &sum.data[r * n];
			const float* run = &run_[r * n];
			for (size_t c = r; c < n; ++c)
				total[c] += run[c];
		}
	}
}

MatrixD FloatGramSums::take(size_t index) {
	if (++taken_ == sums_.size()) run_ = {};
	return std::move(sums_.at(index));
}

MatrixD to_double(const MatrixF& a) {
	MatrixD out(a.rows, a.cols);
	std::copy(a.data.begin(), a.data.end(), out.data.begin());
	return out;
}

void symmetric_from_upper(MatrixD& c) {
	for (size_t r = 0; r < c.rows; ++r)
		for (size_t col = 0; col < r; ++col)
			c(r, col) = c(col, r);
}

namespace {

// Eigenpairs first..last (1-based, ascending) of the symmetric tridiagonal matrix (diagonal,
// off_diagonal): values ascending into values[0, count), vectors column-major, n × count. MRRR
// (dstemr) unless bisection is asked for or MRRR fails (it can: LAPACK info 22 on a tiny tsv
// merge); then bisection and inverse iteration (dstebz + dstein) on copies, as dsyevr falls back.
void tridiagonal_eigenpairs(std::vector<double> diagonal, std::vector<double> off_diagonal, size_t first, size_t last,
                            Eigensolver solver, double* values, double* vectors) {
	const size_t n = diagonal.size(), count = last - first + 1;
	const lapack_int size = as_int(n), low = as_int(first), high = as_int(last);
	lapack_int found = 0;
	if (solver == Eigensolver::Mrrr) {
		std::vector<double> d = diagonal, e = off_diagonal;
		std::vector<lapack_int> support(2 * count);
		lapack_int relative_accuracy = 0;
		if (LAPACKE_dstemr(LAPACK_COL_MAJOR, 'V', 'I', size, d.data(), e.data(), 0, 0, low, high, &found, values,
		                   vectors, size, as_int(count), support.data(), &relative_accuracy) == 0 &&
		    static_cast<size_t>(found) == count)
			return;
	}
	std::vector<lapack_int> block(n), split(n), failed(count);
	lapack_int blocks = 0;
	check_info(LAPACKE_dstebz('I', 'E', size, 0, 0, low, high, 0.0, diagonal.data(), off_diagonal.data(), &found,
	                          &blocks, values, block.data(), split.data()),
	           "tridiagonal eigenvalues (stebz)");
	if (static_cast<size_t>(found) != count)
		throw Error(fmt::format("tridiagonal eigensolver (stebz) found {} of {} eigenvalues", found, count));
	check_info(LAPACKE_dstein(LAPACK_COL_MAJOR, size, diagonal.data(), off_diagonal.data(), found, values, block.data(),
	                          split.data(), vectors, size, failed.data()),
	           "tridiagonal eigenvectors (stein)");
}

} // namespace

Eigenpairs top_eigenpairs(MatrixD symmetric, size_t count, Eigensolver solver) {
	const size_t n = symmetric.rows;
	count = std::min(count, n);
	Eigenpairs out{std::vector<double>(count), MatrixD(n, count)};
	if (count == 0) return out;
	single_threaded_blas();
	// Column-major on the same memory: the row-major upper triangle is the column-major lower one,
	// and LAPACKE's row-major copies of the matrix and the vectors (a fifth of the time) are saved.
	// Vector j (ascending eigenvalues) is then vectors[j · n, (j + 1) · n).
	std::vector<double> values(n), vectors(n * count);
	const lapack_int size = as_int(n);
	if (count == n) {
		// dsyevr: MRRR for all n, falling back to bisection and inverse iteration itself.
		std::vector<lapack_int> support(2 * n);
		lapack_int found = 0;
		check_info(LAPACKE_dsyevr(LAPACK_COL_MAJOR, 'V', 'A', 'L', size, symmetric.data.data(), size, 0, 0, 0, 0, 0.0,
		                          &found, values.data(), vectors.data(), size, support.data()),
		           "symmetric eigensolver (syevr)");
	} else {
		// dsyevr's steps, but MRRR for the subset too: dsyevr takes bisection and inverse iteration
		// there, 15% of tsv's time for its top n/N of n (dlaebz).
		std::vector<double> diagonal(n), off_diagonal(n), reflectors(n);
		check_info(LAPACKE_dsytrd(LAPACK_COL_MAJOR, 'L', size, symmetric.data.data(), size, diagonal.data(),
		                          off_diagonal.data(), reflectors.data()),
		           "tridiagonal reduction (sytrd)");
		tridiagonal_eigenpairs(std::move(diagonal), std::move(off_diagonal), n - count + 1, n, solver, values.data(),
		                       vectors.data());
		check_info(LAPACKE_dormtr(LAPACK_COL_MAJOR, 'L', 'L', 'N', size, as_int(count), symmetric.data.data(), size,
		                          reflectors.data(), vectors.data(), size),
		           "back-transformation (ormtr)");
	}
	for (size_t j = 0; j < count; ++j) {
		out.values[j] = values[count - 1 - j];
		const double* vector = &vectors[(count - 1 - j) * n];
		for (size_t i = 0; i < n; ++i)
			out.vectors(i, j) = vector[i];
	}
	return out;
}

MatrixD inverse_sqrt_psd(const MatrixD& w, double relative_floor) {
	const size_t n = w.rows;
	const Eigenpairs pairs = top_eigenpairs(w, n);
	const double floor = n ? std::max(pairs.values[0], 0.0) * relative_floor : 0.0;
	MatrixD scaled = pairs.vectors; // Q diag(λ^(-1/2)), then times Qᵀ
	for (size_t j = 0; j < n; ++j) {
		const double factor = pairs.values[j] > floor ? 1.0 / std::sqrt(pairs.values[j]) : 0.0;
		for (size_t i = 0; i < n; ++i)
			scaled(i, j) *= factor;
	}
	return matmul(scaled, false, pairs.vectors, true);
}

MatrixD polar_factor_of_rows(const MatrixD& a, double relative_floor) {
	return matmul(inverse_sqrt_psd(matmul(a, false, a, true), relative_floor), false, a, false);
}

SvdD top_singular_triplets(const MatrixD& a, size_t rank) {
	const bool wide = a.rows <= a.cols; // the eigenvectors are U when wide, V when tall
	const size_t small = wide ? a.rows : a.cols, k = std::min(rank, small);
	SvdD out{MatrixD(a.rows, k), std::vector<double>(k), MatrixD(k, a.cols)};
	if (k == 0) return out;
	single_threaded_blas();
	const Eigenpairs pairs = top_eigenpairs(wide ? matmul(a, false, a, true) : matmul(a, true, a, false), k);
	const MatrixD& side = pairs.vectors;
	for (size_t j = 0; j < k; ++j)
		out.S[j] = std::sqrt(std::max(pairs.values[j], 0.0));
	// The other side: Vᵀ = S⁻¹ Uᵀ A (wide) or U = A V S⁻¹ (tall).
	const MatrixD product = wide ? matmul(side, true, a, false) : matmul(a, false, side, false);
	for (size_t j = 0; j < k; ++j) {
		const double inverse = out.S[j] > 0 ? 1.0 / out.S[j] : 0.0;
		for (size_t i = 0; i < small; ++i)
			(wide ? out.U(i, j) : out.Vt(j, i)) = side(i, j);
		if (wide)
			for (size_t c = 0; c < a.cols; ++c)
				out.Vt(j, c) = product(j, c) * inverse;
		else
			for (size_t r = 0; r < a.rows; ++r)
				out.U(r, j) = product(r, j) * inverse;
	}
	return out;
}

MatrixD solve_symmetric(MatrixD a, MatrixD b, bool* used_lu) {
	if (a.rows != a.cols || b.rows != a.rows) throw Error("solve_symmetric: A must be square with as many rows as B");
	single_threaded_blas();
	const auto n = static_cast<lapack_int>(a.rows), nrhs = static_cast<lapack_int>(b.cols);
	if (used_lu) *used_lu = false;
	// Cholesky first (the Gram sums are symmetric positive semi-definite), on a copy of A and on B
	// in place: when the factorization fails, dposv returns before touching B. A singular or
	// indefinite matrix falls back to LU with partial pivoting.
	MatrixD factor = a;
	if (n == 0 || LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', n, nrhs, factor.data.data(), n, b.data.data(), nrhs) == 0)
		return b;
	if (used_lu) *used_lu = true;
	std::vector<lapack_int> pivots(a.rows);
	const lapack_int info =
	    LAPACKE_dgesv(LAPACK_ROW_MAJOR, n, nrhs, a.data.data(), n, pivots.data(), b.data.data(), nrhs);
	if (info != 0) throw Error(fmt::format("the {}x{} system is singular (LU pivot {} is zero)", a.rows, a.cols, info));
	for (double v : b.data)
		if (!std::isfinite(v)) throw Error("the linear system's solution is not finite");
	return b;
}

} // namespace weld::linalg
