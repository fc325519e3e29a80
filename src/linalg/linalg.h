// Dense linear algebra for the SVD-based merge methods: a plain row-major matrix, products
// (OpenBLAS), full and randomized truncated SVD, QR and the polar factor (LAPACKE).
//
// Every call runs OpenBLAS single-threaded, so results are byte-identical whatever the number
// of weld threads (the executor already runs one tensor per thread). Failures (LAPACK not
// converging, non-finite input) throw weld::Error; callers add the tensor name.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace weld::linalg {

// Row-major: element (r, c) is data[r * cols + c]. Works for float and double.
template <class T> struct Matrix {
	size_t rows = 0, cols = 0;
	std::vector<T> data;

	Matrix() = default;
	Matrix(size_t r, size_t c) : rows(r), cols(c), data(r * c, T(0)) {}
	T& operator()(size_t r, size_t c) {
		assert(r < rows && c < cols);
		return data[r * cols + c];
	}
	T operator()(size_t r, size_t c) const {
		assert(r < rows && c < cols);
		return data[r * cols + c];
	}
};

using MatrixF = Matrix<float>;
using MatrixD = Matrix<double>;

// Thin SVD A = U diag(S) Vt: U is m×k, S has k values (descending, >= 0), Vt is k×n.
template <class T> struct Svd {
	Matrix<T> U;
	std::vector<T> S;
	Matrix<T> Vt;
};

using SvdF = Svd<float>;
using SvdD = Svd<double>;

// Which algorithm truncated_svd used (for --verbose notes).
enum class SvdPath { Full, Randomized };
std::string_view to_string(SvdPath path);

// op(A) · op(B), op = transpose when the flag is set.
template <class T> Matrix<T> matmul(const Matrix<T>& a, bool transpose_a, const Matrix<T>& b, bool transpose_b);

// Thin SVD with k = min(m, n) (LAPACK gesdd).
template <class T> Svd<T> svd(const Matrix<T>& a);

// The min(m, n) singular values alone, descending (gesdd without vectors: several times faster).
template <class T> std::vector<T> singular_values(const Matrix<T>& a);

// C += op(A) op(B), op transposing where asked; no temporary of C's size.
template <class T>
void add_product(Matrix<T>& c, const Matrix<T>& a, bool transpose_a, const Matrix<T>& b, bool transpose_b);

// Orthonormal basis of A's columns (m×n, m >= n): Q of A = QR (geqrf + orgqr).
template <class T> Matrix<T> orthonormal_columns(const Matrix<T>& a);

// Top-`rank` singular triplets by Halko–Martinsson–Tropp: Gaussian test matrix with
// `oversample` extra columns drawn from the counter-based stream `key`, `power_iterations`
// subspace iterations with QR in between. Deterministic for a given key.
template <class T>
Svd<T> randomized_svd(const Matrix<T>& a, size_t rank, uint64_t key, size_t oversample = 10, int power_iterations = 2);

// Top-`rank` singular triplets, by the cheaper path: randomized when rank + 10 < min(m, n) / 4
// and min(m, n) >= 256, else the full SVD truncated. Sets *path when given.
template <class T> Svd<T> truncated_svd(const Matrix<T>& a, size_t rank, uint64_t key, SvdPath* path = nullptr);

// The nearest matrix with orthonormal columns (or rows, when wide): U Vt of A's SVD.
template <class T> Matrix<T> polar_factor(const Matrix<T>& a);

// A standard normal draw: the index-th of stream key (Box–Muller over random_uniform).
double random_normal(uint64_t key, uint64_t index);

// The `rank` largest singular triplets of A (m × n) from the eigenpairs of the smaller Gram
// matrix (A Aᵀ or Aᵀ A; LAPACK dsyevr computes only those), the other side's vectors as A's
// products with them: far cheaper than the full SVD when rank ≪ min(m, n). U S Vᵀ is then the
// projection of A onto the kept vectors to rounding; singular values much below √ε · σ_max lose
// their relative accuracy, as the Gram matrix squares them. Triplets with σ = 0 have zero vectors
// on the product side.
SvdD top_singular_triplets(const MatrixD& a, size_t rank);

// C's upper triangle += Aᵀ A (LAPACK dsyrk; C is A.cols square). symmetric_from_upper fills the
// lower triangle from it.
void add_gram(MatrixD& c, const MatrixD& a);
void symmetric_from_upper(MatrixD& c);

// AᵢᵀAᵢ of `count` matrices given in row panels of float32 values (each task's Gram matrix),
// summed in double from float32 products (ssyrk: 1.6× dsyrk's speed on this machine's AVX2
// kernels) over runs of at most kRunRows rows: an entry's rounding is that of float32 dot
// products of kRunRows terms, about √kRunRows · 2⁻²⁴ of |a_i| |a_j| (as a float32 SVD's), and
// does not grow with the rows. The sums share one float32 run (n × n floats besides the count
// n × n doubles). For the top eigenvectors (tsv, core_space); where small eigenvalues count
// (opcm's σ⁻¹), add_gram in double.
class FloatGramSums {
public:
	static constexpr size_t kRunRows = 256;

	FloatGramSums(size_t count, size_t n) : sums_(count, MatrixD(n, n)), run_(n * n) {}

	// Adds rowsᵀ rows to sum `index` (rows.cols == n).
	void add(size_t index, const Matrix<float>& rows);
	// Sum `index` (its upper triangle, as add_gram's), moved out; the last take frees the run.
	MatrixD take(size_t index);

private:
	std::vector<MatrixD> sums_;
	std::vector<float> run_;
	size_t taken_ = 0;
};

// A float32 matrix in double.
MatrixD to_double(const Matrix<float>& a);

// The `count` largest eigenpairs of a symmetric matrix (its upper triangle is read; only those
// are computed, from its tridiagonal form): values descending, vectors[:, j] the eigenvector of
// values[j].
struct Eigenpairs {
	std::vector<double> values;
	MatrixD vectors; // n × count
};
// How a subset's eigenpairs are found: MRRR (falling back to the other where it fails), or
// bisection and inverse iteration (what dsyevr does for a subset; for tests of the fallback).
enum class Eigensolver { Mrrr, Bisection };
Eigenpairs top_eigenpairs(MatrixD symmetric, size_t count, Eigensolver solver = Eigensolver::Mrrr);

// W^(-1/2) of a symmetric positive semi-definite W (upper triangle read), as a pseudo-inverse:
// eigenvalues at or below relative_floor · the largest count as zero.
MatrixD inverse_sqrt_psd(const MatrixD& w, double relative_floor);

// The polar factor of A's rows from their Gram matrix: (A Aᵀ)^(-1/2) A, eigenvalues at or below
// relative_floor · the largest dropped (dependent rows give a partial isometry, where
// polar_factor completes the basis arbitrarily). A fraction of polar_factor's SVD time.
MatrixD polar_factor_of_rows(const MatrixD& a, double relative_floor);

// X with A X = B for a symmetric A: Cholesky (LAPACK dposv), falling back to LU with partial
// pivoting (dgesv) when A is not positive definite; *used_lu says which. Never forms A⁻¹.
// Throws weld::Error when A is singular.
MatrixD solve_symmetric(MatrixD a, MatrixD b, bool* used_lu = nullptr);

} // namespace weld::linalg
