#include "lora/rmm.h"

#include <algorithm>
#include <cmath>

namespace weld::lora {
namespace {

// scale · m in double.
linalg::MatrixD scaled_double(const linalg::MatrixF& m, double scale) {
	linalg::MatrixD d(m.rows, m.cols);
	std::transform(m.data.begin(), m.data.end(), d.data.begin(), [&](float v) { return scale * v; });
	return d;
}

// ‖B A‖_F² = tr((BᵀB)(A Aᵀ)): r × r products only.
double product_norm_squared(const linalg::MatrixD& b, const linalg::MatrixD& a) {
	const linalg::MatrixD btb = linalg::matmul(b, true, b, false), aat = linalg::matmul(a, false, a, true);
	double trace = 0;
	for (size_t i = 0; i < btb.rows; ++i)
		for (size_t j = 0; j < btb.cols; ++j)
			trace += btb(i, j) * aat(j, i);
	return std::max(trace, 0.0);
}

} // namespace

FactorBasis fit_factor_basis(const std::vector<std::span<const float>>& tasks, size_t rank) {
	const size_t n = tasks.size(), size = tasks.front().size();
	linalg::MatrixD x(size, n);
	for (size_t i = 0; i < n; ++i)
		for (size_t p = 0; p < size; ++p)
			x(p, i) = tasks[i][p];
	const linalg::SvdD svd = linalg::svd(x);
	FactorBasis fit;
	fit.coefficients = linalg::MatrixD(n, rank);
	for (size_t k = 0; k < rank; ++k) {
		const bool present = k < svd.S.size(); // a factor with fewer entries than tasks has fewer directions
		std::vector<float> phi(size, 0.0f);
		for (size_t p = 0; present && p < size; ++p)
			phi[p] = static_cast<float>(svd.U(p, k) * svd.S[k]);
		fit.basis.push_back(std::move(phi));
		for (size_t i = 0; present && i < n; ++i)
			fit.coefficients(i, k) = svd.Vt(k, i);
	}
	return fit;
}

std::vector<float> reconstruct_factor(const FactorBasis& fit, size_t task) {
	std::vector<double> sum(fit.basis.front().size(), 0.0);
	for (size_t k = 0; k < fit.basis.size(); ++k)
		for (size_t p = 0; p < sum.size(); ++p)
			sum[p] += fit.coefficients(task, k) * fit.basis[k][p];
	return {sum.begin(), sum.end()};
}

double update_norm_squared(const LoraFactors& factors) {
	return product_norm_squared(scaled_double(factors.b, factors.scaling), linalg::to_double(factors.a));
}

double update_distance_squared(const LoraFactors& x, const LoraFactors& y) {
	// [s_x B_x, −s_y B_y] · [A_x; A_y] is the difference of the two updates.
	const size_t rx = x.a.rows, ry = y.a.rows, in = x.a.cols, out = x.b.rows;
	linalg::MatrixD a(rx + ry, in), b(out, rx + ry);
	for (size_t k = 0; k < rx + ry; ++k)
		for (size_t c = 0; c < in; ++c)
			a(k, c) = k < rx ? x.a(k, c) : y.a(k - rx, c);
	for (size_t r = 0; r < out; ++r)
		for (size_t k = 0; k < rx + ry; ++k)
			b(r, k) = k < rx ? x.scaling * x.b(r, k) : -y.scaling * y.b(r, k - rx);
	return product_norm_squared(b, a);
}

double relative_update_error(const LoraFactors& original, const LoraFactors& reverted) {
	const double norm = update_norm_squared(original), distance = update_distance_squared(original, reverted);
	if (norm == 0) return distance == 0 ? 0.0 : INFINITY;
	return std::sqrt(distance / norm);
}

} // namespace weld::lora
