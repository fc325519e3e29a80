// TSV-M's out-of-core form for tall matrices, exposed for its tests.
#pragma once

#include "methods/method.h"
#include "methods/row_panels.h"

#include <memory>

namespace weld {

// The block merge of TSV-M for a tall matrix of `elements` elements, whatever its size, or nullptr
// when the shape does not allow it (not a matrix, wider than tall, rows crossing blocks). Its Gram
// sums add panels of panel_rows rows (0: about 2^19 elements per panel).
std::unique_ptr<BlockMerge> tsv_tall_block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
                                                 size_t panel_rows = 0);

} // namespace weld
