// Per-row sums or maxima of a tensor streamed in blocks, whose rows (of the last dimension) need
// not line up with blocks. A row inside one block is reduced there; a row that crosses block
// boundaries is reduced piece by piece, each block keeping the piece that continues a row begun
// before it and the piece that starts a row going on after it; end_pass combines the pieces in
// block order, so the result does not depend on the order blocks came in. Memory: `width`
// doubles per row and two pieces per block.
#pragma once

#include "methods/method.h"

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace weld {

class RowReduction {
public:
	enum class Op { Sum, Max };

	// n elements in rows of row_length (> 0, dividing n); width values per row.
	RowReduction(uint64_t n, uint64_t row_length, size_t width, Op op)
	    : n_(n), row_(row_length), width_(width), op_(op), rows_((n / row_length) * width),
	      pieces_(block_count(n) * 2 * width) {}

	// Calls reduce(first, count, out) for every piece of a row in the block at offset (of size
	// elements): elements [first, first + count) of the tensor, whose width values it writes to out.
	template <class F> void observe(uint64_t offset, uint64_t size, F&& reduce) {
		const uint64_t end = offset + size, block = offset / kBlockElements;
		for (uint64_t first = offset; first < end;) {
			const uint64_t row = first / row_, row_start = row * row_, piece_end = std::min(end, row_start + row_);
			double* out = &rows_[row * width_];
			if (first != row_start)
				out = &pieces_[(block * 2) * width_]; // continues a row
			else if (piece_end != row_start + row_)
				out = &pieces_[(block * 2 + 1) * width_]; // starts one
			reduce(first, piece_end - first, std::span<double>(out, width_));
			first = piece_end;
		}
	}

	// After every block was observed: the crossing rows' pieces combined in block order.
	void end_pass() {
		for (uint64_t block = 0; block < block_count(n_); ++block) {
			const uint64_t offset = block * kBlockElements, end = std::min(n_, offset + kBlockElements);
			if (offset % row_ != 0) combine(offset / row_, &pieces_[(block * 2) * width_]);
			const uint64_t last_row = (end - 1) / row_;
			if (last_row * row_ >= offset && (last_row + 1) * row_ > end)
				std::copy_n(&pieces_[(block * 2 + 1) * width_], width_, &rows_[last_row * width_]);
		}
		pieces_ = {};
	}

	std::span<const double> row(uint64_t r) const { return {&rows_[r * width_], width_}; }

private:
	uint64_t n_, row_;
	size_t width_;
	Op op_;
	std::vector<double> rows_;
	std::vector<double> pieces_; // per block: the piece continuing a row, the piece starting one

	void combine(uint64_t row, const double* piece) {
		double* into = &rows_[row * width_];
		for (size_t w = 0; w < width_; ++w)
			into[w] = op_ == Op::Sum ? into[w] + piece[w] : std::max(into[w], piece[w]);
	}
};

} // namespace weld
