#include "lora/overlap.h"

#include "lora/weighted_adapter.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

namespace weld::lora {
namespace {

// The first `count` columns of m.
linalg::MatrixD leading_columns(const linalg::MatrixD& m, size_t count) {
	linalg::MatrixD out(m.rows, count);
	for (size_t r = 0; r < m.rows; ++r)
		for (size_t c = 0; c < count; ++c)
			out(r, c) = m(r, c);
	return out;
}

size_t numerical_rank(const std::vector<double>& singular_values, size_t rows, size_t cols) {
	if (singular_values.empty()) return 0;
	const double tolerance =
	    singular_values.front() * static_cast<double>(std::max(rows, cols)) * std::numeric_limits<double>::epsilon();
	return static_cast<size_t>(
	    std::count_if(singular_values.begin(), singular_values.end(), [&](double s) { return s > tolerance; }));
}

} // namespace

linalg::MatrixD column_space(const LoraFactors& factors) {
	const linalg::MatrixD a = linalg::to_double(factors.a), b = linalg::to_double(factors.b);
	const size_t out = b.rows, in = a.cols;
	if (out <= b.cols) {
		// B has no more rows than columns: the SVD of ΔW itself is as small.
		const auto svd = linalg::svd(linalg::matmul(b, false, a, false));
		return leading_columns(svd.U, numerical_rank(svd.S, out, in));
	}
	const linalg::MatrixD q = linalg::orthonormal_columns(b);
	const linalg::MatrixD small = linalg::matmul(linalg::matmul(q, true, b, false), false, a, false);
	const auto svd = linalg::svd(small);
	const size_t rank = numerical_rank(svd.S, out, in);
	return linalg::matmul(q, false, leading_columns(svd.U, rank), false);
}

SubspaceOverlap subspace_overlap(const linalg::MatrixD& u1, const linalg::MatrixD& u2) {
	SubspaceOverlap result{u1.cols, u2.cols, 0, 0};
	if (u1.cols == 0 || u2.cols == 0) return result;
	const linalg::MatrixD cross = linalg::matmul(u1, true, u2, false);
	double squares = 0;
	for (double v : cross.data)
		squares += v * v;
	result.overlap = squares / static_cast<double>(std::min(u1.cols, u2.cols));
	result.max_cosine = std::min(1.0, linalg::svd(cross).S.front());
	return result;
}

std::vector<PairOverlap> adapter_overlaps(const std::vector<PeftAdapter>& adapters) {
	auto [names, holders] = modules_by_name(adapters);
	std::vector<PairOverlap> result;
	for (const auto& name : names) {
		const auto& present = holders[name];
		std::vector<linalg::MatrixD> spaces;
		for (size_t i : present)
			spaces.push_back(column_space(factors_of(*adapters[i].find(name))));
		for (size_t x = 0; x < present.size(); ++x)
			for (size_t y = x + 1; y < present.size(); ++y) {
				if (spaces[x].rows != spaces[y].rows)
					throw Error(fmt::format("module '{}': adapter {} writes {} outputs but adapter {} writes {}; "
					                        "they adapt different base models",
					                        name, adapters[present[x]].dir.string(), spaces[x].rows,
					                        adapters[present[y]].dir.string(), spaces[y].rows));
				result.push_back({name, present[x], present[y], subspace_overlap(spaces[x], spaces[y])});
			}
	}
	return result;
}

} // namespace weld::lora
