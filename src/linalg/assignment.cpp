// Shortest augmenting paths with row and column potentials (Jonker–Volgenant's formulation of
// the Hungarian method): rows are added one at a time, each by a Dijkstra-like search over the
// reduced costs, so the whole solve is O(n³) and uses O(n) memory beyond the matrix.
#include "linalg/assignment.h"

#include "util/error.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace weld::linalg {

std::vector<int64_t> max_weight_assignment(std::span<const double> score, int64_t n) {
	if (n < 0) throw Error(fmt::format("max_weight_assignment: negative size {}", n));
	if (score.size() != static_cast<size_t>(n) * static_cast<size_t>(n))
		throw Error(fmt::format("max_weight_assignment: {} scores for a {}×{} matrix", score.size(), n, n));
	for (size_t i = 0; i < score.size(); i++)
		if (!std::isfinite(score[i]))
			throw Error(
			    fmt::format("max_weight_assignment: score ({}, {}) is not finite ({})", i / n, i % n, score[i]));
	if (n == 0) return {};
	// Minimize cost = -score. Index 0 is a virtual column (1-based rows and columns below).
	const auto size = static_cast<size_t>(n);
	constexpr double kInf = std::numeric_limits<double>::infinity();
	std::vector<double> u(size + 1, 0.0), v(size + 1, 0.0), min_reduced(size + 1);
	std::vector<size_t> row_of(size + 1, 0), previous(size + 1, 0);
	std::vector<char> used(size + 1);
	for (size_t row = 1; row <= size; row++) {
		row_of[0] = row;
		size_t column = 0;
		std::fill(min_reduced.begin(), min_reduced.end(), kInf);
		std::fill(used.begin(), used.end(), 0);
		do {
			used[column] = 1;
			const size_t i = row_of[column];
			double delta = kInf;
			size_t next = 0;
			for (size_t j = 1; j <= size; j++) {
				if (used[j]) continue;
				const double reduced = -score[(i - 1) * size + (j - 1)] - u[i] - v[j];
				if (reduced < min_reduced[j]) {
					min_reduced[j] = reduced;
					previous[j] = column;
				}
				// Strict: the lowest column index wins ties, so the result depends on the input alone.
				if (min_reduced[j] < delta) {
					delta = min_reduced[j];
					next = j;
				}
			}
			for (size_t j = 0; j <= size; j++) {
				if (used[j]) {
					u[row_of[j]] += delta;
					v[j] -= delta;
				} else {
					min_reduced[j] -= delta;
				}
			}
			column = next;
		} while (row_of[column] != 0);
		do { // augment along the path back to the virtual column
			const size_t back = previous[column];
			row_of[column] = row_of[back];
			column = back;
		} while (column != 0);
	}
	std::vector<int64_t> p(size);
	for (size_t j = 1; j <= size; j++)
		p[row_of[j] - 1] = static_cast<int64_t>(j - 1);
	return p;
}

} // namespace weld::linalg
