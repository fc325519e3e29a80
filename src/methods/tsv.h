// TSV-M's out-of-core form for tall matrices, exposed for its tests.
#pragma once

#include "methods/method.h"

#include <memory>

namespace weld {

// Tall matrices (rows >= cols, every block whole rows) of at least this many elements merge in
// blocks, from Gram matrices, instead of with whole-tensor SVDs: the embedding of a 1B model
// (128256 × 2048, 1 GB in float32 per model) is the first such tensor.
constexpr uint64_t kTsvBlockElements = uint64_t{1} << 26;

// The block merge of TSV-M for a tall matrix of `elements` elements, whatever its size, or nullptr
// when the shape does not allow it (not a matrix, wider than tall, rows crossing blocks). Its Gram
// sums add panels of panel_rows rows (0: about 2^19 elements per panel).
std::unique_ptr<BlockMerge> tsv_tall_block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
                                                 size_t panel_rows = 0);

} // namespace weld
