// The streamed forms of opcm and core_space for tall matrices, exposed for their tests (tsv's is
// in tsv.h).
#pragma once

#include "methods/method.h"

#include <memory>

namespace weld {

// The block merge of the method for a tall matrix of `elements` elements, whatever its size, or
// nullptr when the shape does not allow it (not a matrix, wider than tall, rows crossing blocks;
// core_space: more task directions than the matrix has). Its sums over rows add panels of
// panel_rows rows (0: about 2^19 elements per panel).
std::unique_ptr<BlockMerge> opcm_rows_block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
                                                  size_t panel_rows = 0);
std::unique_ptr<BlockMerge> core_space_rows_block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
                                                        size_t panel_rows = 0);

} // namespace weld
