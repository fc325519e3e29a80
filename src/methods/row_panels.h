// Matrix methods computed from the rows of every task vector, in order, without a copy of the
// tensor: Gram-matrix forms of the SVD-based methods (tsv, opcm). An algorithm sums products of
// whole rows over one or more passes, then maps each row of the task vectors to a row of the
// merged delta. The same algorithm runs streamed (the executor's blocks, for tall matrices whose
// rows fit the blocks) or on a whole tensor in memory (in panels; a wide matrix as its transpose).
#pragma once

#include "linalg/linalg.h"
#include "methods/method.h"
#include "methods/subspace_util.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace weld {

// The task vectors of a merge: weight_t · (model_t − base), rounded to float32 as every method's
// task vector is.
struct TaskVectors {
	std::vector<size_t> models;
	std::vector<double> weights; // one per model
	size_t base = 0;

	// Every non-base source of input, weighted by weights (empty: all 1).
	static TaskVectors of(const MergeInput& input, size_t source_count, std::vector<double> weights = {});

	float value(std::span<const std::span<const float>> sources, size_t t, size_t index) const {
		return subspace::task_value(sources[models[t]][index], sources[base][index], weights[t]);
	}
};

// What a row-panel method computes. Rows come as panels: panel[t] holds task t's next rows, as
// the float32 task values; an algorithm widens them where its sums need double.
class RowPanelAlgorithm {
public:
	virtual ~RowPanelAlgorithm() = default;
	virtual int passes() const = 0;
	// Pass after pass, every row once, in row order.
	virtual void add_panel(const std::vector<linalg::MatrixF>& panel) = 0;
	virtual void end_pass() = 0;
	// After the passes: the merged delta's rows from every task's same rows, the first of them
	// row first_row (streamed blocks come in any order).
	virtual linalg::MatrixD merged_rows(const std::vector<linalg::MatrixF>& task_rows, uint64_t first_row) const = 0;
	// For --verbose.
	virtual std::string note() const = 0;
};

// Matrices stream (when their shape allows) once the executor's whole-tensor job, a float32 copy
// of every source and the output, would take this many bytes: below it, the whole tensor in
// memory is faster (no ordered passes; two tensors at once on two threads) and small enough.
// At base + 3 that is 53.7 M elements: the embedding of a 1B model (128256 × 2048) streams, its
// MLP matrices (8192 × 2048) do not; at base + 8, 26.8 M elements.
constexpr uint64_t kRowPanelStreamBytes = uint64_t{1} << 30;

// Whether a matrix of `elements` elements merged from `source_count` sources is large enough to
// stream (kRowPanelStreamBytes).
inline bool row_panels_stream(uint64_t elements, size_t source_count) {
	return (source_count + 1) * elements * sizeof(float) >= kRowPanelStreamBytes;
}

// What a row-panel algorithm holds for a rows × cols matrix (MergeMethod::working_bytes): `squares`
// n × n double matrices (n = min(rows, cols)), every task's panel (its block values and panel in
// float, a copy in double) and the output panel, and (streamed) the blocks waiting for their turn.
uint64_t row_panel_working_bytes(size_t tasks, uint64_t rows, uint64_t cols, uint64_t squares);

// Whether a tensor of this shape streams as whole rows through the executor's blocks: a tall matrix
// (rows >= cols) of at least min_elements elements whose rows fit the blocks.
bool streams_as_rows(const MergeInput& input, uint64_t elements, uint64_t min_elements);

// The streamed form: the executor's blocks (whole rows) reach the algorithm in panels of panel_rows
// rows (0: about 2^19 elements), in row order whatever order and thread they come in; the output
// is base + scale · delta.
std::unique_ptr<BlockMerge> stream_row_panels(std::unique_ptr<RowPanelAlgorithm> algorithm, TaskVectors tasks,
                                              double scale, uint64_t rows, uint64_t cols, size_t panel_rows = 0);

// The whole-tensor form, in panels of about 2^19 elements: out = base + scale · delta. A wide
// matrix is merged as its transpose (its columns are the algorithm's rows); make_algorithm gets the
// rows and columns of the form it sees. Here an algorithm may keep rows of its own between passes
// (a tensor's worth, counted in its working bytes); streamed, it may not.
void merge_in_row_panels(const MergeInput& input, const TaskVectors& tasks, double scale,
                         const std::function<std::unique_ptr<RowPanelAlgorithm>(uint64_t, uint64_t)>& make_algorithm,
                         std::span<float> out);

} // namespace weld
