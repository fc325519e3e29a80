// Where a merge's output tensors go: safetensors shards (SafetensorsWriter) or one GGUF file
// (GgufModelWriter). The executor writes each tensor whole or in non-overlapping ranges, from
// any thread, in the element type its spec says; it never needs to know the format.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace weld {

class TensorSink {
public:
	virtual ~TensorSink() = default;
	// Whether this sink writes the tensor (in a distributed merge, only its part's).
	virtual bool owns(size_t tensor_index) const = 0;
	virtual void write(size_t tensor_index, std::span<const uint8_t> bytes) = 0;
	// Part of a tensor; whole: bytes is all of it.
	virtual void write_range(size_t tensor_index, uint64_t byte_offset, std::span<const uint8_t> bytes,
	                         bool whole = false) = 0;
	// Checks every tensor was written and closes the output.
	virtual void finish() = 0;
};

} // namespace weld
