// safetensors reading and writing.
//
// Format (https://github.com/huggingface/safetensors): 8 bytes little-endian N, then N bytes of
// UTF-8 JSON, then the data region. The JSON is an object: each key is a tensor name mapping to
// {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]} with offsets relative to the
// data region; the optional key "__metadata__" maps to a string->string object.
//
// The reader trusts nothing. In order, it checks:
//   1. the file holds at least 8 bytes, and N <= kMaxHeaderBytes and 8 + N <= file size;
//   2. the header starts with '{' and is valid JSON (an object of objects, no duplicate keys);
//   3. every dtype is known, every shape entry is a non-negative integer, products don't overflow;
//   4. end >= begin, shape x dtype size == end - begin;
//   5. sorted by begin, tensors tile the data region exactly: no overlap, no hole, and the last
//      tensor ends at the end of the file.
// Each failure is a weld::Error naming the file, the tensor and the field.
#pragma once

#include "io/dtype.h"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace weld {

// Headers larger than this are refused before anything is allocated (safetensors uses 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

// Untrusted text (tensor names, shard names, paths from files) made safe for a one-line error
// message: control characters, invalid UTF-8 and invisible/bidi code points become \xNN, and
// the result is cut to about max_bytes with "...".
std::string escape_for_message(std::string_view text, size_t max_bytes = 80);
// escape_for_message(text) in single quotes.
std::string quote_for_message(std::string_view text);
// A path as error messages show it (escape_for_message, up to 400 bytes).
inline std::string show(const std::filesystem::path& path) {
	return escape_for_message(path.string(), 400);
}

struct TensorInfo {
	std::string name;
	DType dtype = DType::F32;
	std::vector<uint64_t> shape;
	uint64_t data_begin = 0; // relative to the data region
	uint64_t data_end = 0;

	uint64_t numel() const;
	uint64_t nbytes() const { return data_end - data_begin; }
};

struct SafetensorsHeader {
	std::vector<TensorInfo> tensors; // in the order of their data offsets
	std::vector<std::pair<std::string, std::string>> metadata;
	uint64_t data_offset = 0; // 8 + N: where the data region starts in the file
};

// Validates the bytes of a whole safetensors file (see the rules above). `label` names the file
// in error messages.
SafetensorsHeader parse_safetensors(std::span<const uint8_t> file, const std::string& label);

// A memory-mapped, validated safetensors file. Tensor data is a zero-copy view into the map.
class SafetensorsFile {
public:
	explicit SafetensorsFile(const std::filesystem::path& path);
	~SafetensorsFile();
	SafetensorsFile(const SafetensorsFile&) = delete;
	SafetensorsFile& operator=(const SafetensorsFile&) = delete;

	const std::filesystem::path& path() const { return path_; }
	const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
	const std::vector<std::pair<std::string, std::string>>& metadata() const { return header_.metadata; }
	const TensorInfo* find(std::string_view name) const;
	std::span<const uint8_t> data(const TensorInfo& tensor) const;
	// Drops the tensor's pages from this process's memory once read, so that resident memory
	// does not grow with the model while streaming through it.
	void release(const TensorInfo& tensor) const;
	// The same for bytes [offset, offset + bytes) of the tensor's data.
	void release_range(const TensorInfo& tensor, uint64_t offset, uint64_t bytes) const;
	// Asks the kernel to start reading the tensor's pages in the background; map_now: also map
	// them into this process now (they then count as resident until released).
	void prefetch(const TensorInfo& tensor, bool map_now = false) const;

private:
	std::filesystem::path path_;
	const uint8_t* map_ = nullptr;
	size_t map_size_ = 0;
	SafetensorsHeader header_;
	std::unordered_map<std::string_view, size_t> by_name_;
};

// model.safetensors.index.json: which shard file holds each tensor. Shard names must be plain
// relative paths inside the model folder (no absolute paths, no "..").
struct ShardIndex {
	std::vector<std::pair<std::string, std::string>> weight_map; // tensor name -> shard file
	std::vector<std::string> shard_files;                        // distinct, in first-seen order
};
ShardIndex parse_shard_index(std::string_view json_text, const std::string& label);

// --- writing ---

struct OutputTensorSpec {
	std::string name;
	DType dtype = DType::F32;
	std::vector<uint64_t> shape;
	uint64_t nbytes() const;
};

// Where each output tensor goes: shards of at most max_shard_bytes of tensor data (a larger
// tensor gets a shard of its own), in the given tensor order. Named model.safetensors when
// there is one shard, else model-0000K-of-0000N.safetensors.
struct OutputLayout {
	struct Shard {
		std::string file_name;
		std::vector<size_t> tensors; // indices into the spec list
		std::string header;          // the complete prefix: 8-byte length + JSON padded to 8 bytes
		uint64_t file_size = 0;
	};
	std::vector<Shard> shards;
	std::vector<size_t> shard_of;      // per tensor
	std::vector<uint64_t> file_offset; // per tensor: absolute byte offset in its shard file
	uint64_t total_size = 0;           // sum of tensor bytes (index metadata.total_size)
};
// Extra string entries of every shard's __metadata__ (besides "format": "pt").
using SafetensorsMetadata = std::vector<std::pair<std::string, std::string>>;
OutputLayout plan_output_layout(const std::vector<OutputTensorSpec>& tensors, uint64_t max_shard_bytes,
                                const SafetensorsMetadata& metadata = {});

// Which rank writes each shard when `ranks` processes share one output (distributed merges):
// per shard, a rank in [0, ranks). Shards go in contiguous runs balanced by file size, so every
// rank's bytes are within one shard of total / ranks; with more ranks than shards some get none.
std::vector<unsigned> shard_ranks(const OutputLayout& layout, unsigned ranks);

// Writes model.safetensors.index.json for a layout of more than one shard; with one shard it
// removes a stale index instead (it would hide the new single file).
void write_shard_index(const std::filesystem::path& dir, const std::vector<OutputTensorSpec>& tensors,
                       const OutputLayout& layout);

// The part of the output one process writes: the shards shard_ranks() gives to `rank`.
struct WriterPart {
	unsigned rank = 0;
	unsigned ranks = 1;
};

// What a writer continues from and reports (merge --resume, exec/merge.h).
struct WriterResume {
	// Per shard of the layout (or empty: none): already complete on disk. The writer neither
	// creates nor writes these, and owns() is false for their tensors.
	std::vector<bool> done;
	// When set, called once for each shard this writer completes, from the thread that wrote its
	// last bytes, with the shard's file descriptor: it takes it over and must close it (after an
	// fsync, to make the shard durable). What it throws fails that write.
	std::function<void(size_t shard, int fd)> on_complete;
};

// Writes a planned set of shards into a folder. write() may be called from several threads at
// once, in any order; the bytes on disk depend only on the data, never on the order. Given a
// part of several, it creates and writes only that part's shards; the shard index is then
// written once, by whoever knows that all parts are finished (write_shard_index).
class SafetensorsWriter {
public:
	SafetensorsWriter(std::filesystem::path dir, std::vector<OutputTensorSpec> tensors, uint64_t max_shard_bytes,
	                  WriterPart part = {}, const SafetensorsMetadata& metadata = {}, WriterResume resume = {});
	~SafetensorsWriter();
	SafetensorsWriter(const SafetensorsWriter&) = delete;
	SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

	const OutputLayout& layout() const { return layout_; }
	// Whether this writer writes the tensor: its shard belongs to this writer's part (always, for
	// a whole output) and is not one of resume.done.
	bool owns(size_t tensor_index) const;
	void write(size_t tensor_index, std::span<const uint8_t> bytes);
	// Writes part of a tensor; the parts of one tensor must not overlap. whole: bytes is all of it.
	void write_range(size_t tensor_index, uint64_t byte_offset, std::span<const uint8_t> bytes, bool whole = false);
	// Closes this part's shards (checking each of their tensors was written). For a whole
	// output it then writes the shard index (write_shard_index); for one part of several it
	// does not, as the other parts may still be writing.
	void finish();

private:
	std::filesystem::path dir_;
	std::vector<OutputTensorSpec> specs_;
	OutputLayout layout_;
	WriterPart part_;
	std::vector<unsigned> shard_rank_;
	std::vector<int> fds_; // per shard; -1 for other parts' shards
	bool finished_ = false;
	std::vector<uint64_t> written_; // bytes written per tensor
	WriterResume resume_;
	// Per shard: units still to write (a byte of a tensor, or 1 for an empty tensor).
	std::vector<uint64_t> pending_;

	bool is_complete(size_t tensor_index) const;
	void complete_shard(size_t shard);
};

} // namespace weld
