// The SVDs of weld extract-lora on a realistic task vector: a 4096 × 4096 matrix of rank 512
// with a flat spectrum (the product of two Gaussian factors), truncated to rank 128. Prints each
// path's time and its Frobenius error against the optimal one (the full SVD's) — the figure in
// docs/lora.md. Build: cmake --build build --target weld_lora_svd_bench.
#include "lora/extract.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

namespace {

using weld::linalg::MatrixF;

// ‖M − B·A‖_F
double error(const MatrixF& m, const weld::ExtractedFactors& f) {
	MatrixF a(f.rank, m.cols), b(m.rows, f.rank);
	a.data = f.a;
	b.data = f.b;
	const auto approx = weld::linalg::matmul(b, false, a, false);
	double sum = 0;
	for (size_t i = 0; i < m.data.size(); i++)
		sum += std::pow(static_cast<double>(m.data[i]) - approx.data[i], 2);
	return std::sqrt(sum);
}

} // namespace

int main() {
	const size_t n = 4096, terms = 512, rank = 128;
	std::mt19937_64 rng(1);
	std::normal_distribution<float> normal(0, 1);
	MatrixF u(n, terms), v(terms, n);
	for (auto& x : u.data)
		x = normal(rng);
	for (auto& x : v.data)
		x = 0.01f * normal(rng);
	const auto m = weld::linalg::matmul(u, false, v, false);
	for (const auto svd : {weld::LoraSvd::Full, weld::LoraSvd::Randomized}) {
		const auto start = std::chrono::steady_clock::now();
		const auto f = weld::decompose_task_vector(m, rank, 0, true, svd, 7);
		const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
		std::printf("%-10s %6.2f s  error %.3f  sigma_1 %.4f  sigma_%zu %.4f\n",
		            svd == weld::LoraSvd::Full ? "full" : "randomized", seconds, error(m, f), f.singular_values[0],
		            rank, f.singular_values[rank - 1]);
	}
}
