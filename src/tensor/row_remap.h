// Rearranging the rows of embedding-like tensors (one row per token) into another vocabulary's
// order before a merge method sees them: each source keeps its own row for a token it has, and
// a shared fallback (a mean of chosen rows, or zeros) fills the tokens it lacks.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace weld {

struct RowRemap {
	uint64_t rows = 0;       // output rows
	uint64_t vocab_rows = 0; // rows [vocab_rows, rows) a source has no row for get its mean over [0, vocab_rows)
	// own[s][r]: the row of source s that becomes output row r; -1 where the source lacks the
	// token or a forced fallback replaces it.
	std::vector<std::vector<int64_t>> own;
	// fallback[r] (r < vocab_rows): the (source, row) pairs whose mean fills row r where own is
	// -1; none means zeros.
	std::vector<std::vector<std::pair<uint32_t, int64_t>>> fallback;
};

// sources[s] holds source_rows[s] x cols float32 values; returns each rearranged to remap.rows x cols.
std::vector<std::vector<float>> remap_rows(const RowRemap& remap, const std::vector<std::vector<float>>& sources,
                                           uint64_t cols);

} // namespace weld
