// Shared by the SVD-based methods (tsv, opcm, doge): task vectors as matrices, the per-task
// rank share, the concatenated top singular factors, and error messages that name the tensor.
#pragma once

#include "linalg/linalg.h"
#include "methods/method.h"

#include <cstddef>
#include <span>
#include <string>
#include <vector>

namespace weld::subspace {

// scale · (x − base) rounded to float32: every subspace method's task-vector value.
inline float task_value(float x, float base, double scale) {
	return static_cast<float>(scale * (static_cast<double>(x) - base));
}

// The tensor is a non-empty matrix (2-D): merged through its singular vectors.
bool is_matrix(const MergeInput& input);

// One source's task vector (source - base) times scale, as a rows × cols matrix (rows = 1 for 1-D).
linalg::MatrixF task_matrix(const MergeInput& input, size_t source, double scale = 1.0);

// Task vectors (source - base) of every non-base source, in recipe order, each scaled by
// scales[i] (one per non-base source; empty = 1), as rows × cols matrices (rows = 1 for 1-D).
std::vector<linalg::MatrixF> task_matrices(const MergeInput& input, const std::vector<double>& scales = {});

// TSV's share of the rank per task: floor(min(m, n) / tasks), at least 1.
size_t rank_share(size_t rows, size_t cols, size_t tasks);

// The element-wise mean of the task vectors (summed in double): what subspace methods give
// tensors that are not matrices.
std::vector<float> mean_of(const std::vector<linalg::MatrixF>& tasks);

// Every task's top-k singular triplets side by side: U is m×(N·k), S has N·k values, Vt is
// (N·k)×n, task i's block at columns/rows [i·k, (i+1)·k). notes (may be null) gets the SVD path.
linalg::Svd<float> concatenated_factors(const std::vector<linalg::MatrixF>& tasks, size_t k, const MergeInput& input,
                                        std::vector<std::string>* notes);

// Runs body; a weld::Error from the linear algebra is re-thrown naming the tensor and method.
template <class F> void naming_tensor(const MergeInput& input, std::string_view method, F&& body);

void rethrow_naming_tensor(const MergeInput& input, std::string_view method);

template <class F> void naming_tensor(const MergeInput& input, std::string_view method, F&& body) {
	try {
		body();
	} catch (...) {
		rethrow_naming_tensor(input, method);
	}
}

// out = base + delta (delta row-major, same length as out).
void write_base_plus(const MergeInput& input, std::span<const float> delta, std::span<float> out);

} // namespace weld::subspace
