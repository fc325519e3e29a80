// GGUF files (llama.cpp's model format): reading and validating the header, and writing a file
// tensor by tensor. The format is described in gguf.cpp, above the reader.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace weld {

// The types of metadata values (gguf_type).
enum class GgufType : uint32_t {
	UINT8 = 0,
	INT8 = 1,
	UINT16 = 2,
	INT16 = 3,
	UINT32 = 4,
	INT32 = 5,
	FLOAT32 = 6,
	BOOL = 7,
	STRING = 8,
	ARRAY = 9,
	UINT64 = 10,
	INT64 = 11,
	FLOAT64 = 12,
};

// A metadata value. A scalar is held as an array of one; `element` is its type (for arrays, the
// type of the elements, never ARRAY: nested arrays are refused). Integers and booleans live in
// `ints` (a UINT64 value above INT64_MAX as its two's complement), floats in `floats`, strings
// in `strings`.
struct GgufValue {
	bool is_array = false;
	GgufType element = GgufType::UINT32;
	std::vector<int64_t> ints;
	std::vector<double> floats;
	std::vector<std::string> strings;

	uint64_t size() const;

	static GgufValue string(std::string text);
	static GgufValue uint32(uint32_t value);
	static GgufValue int32(int32_t value);
	static GgufValue float32(float value);
	static GgufValue boolean(bool value);
	static GgufValue string_array(std::vector<std::string> values);
	static GgufValue int32_array(std::vector<int64_t> values);
	static GgufValue float32_array(std::vector<double> values);
};

// ggml tensor types. weld converts F32, F16, BF16 and Q8_0; the others are known by size only,
// so that a file holding them is read correctly and refused by name.
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 };

struct GgmlTypeTraits {
	std::string_view name; // "q8_0", "q4_K", ...
	uint64_t block_elements = 0;
	uint64_t block_bytes = 0;
};
// nullptr for a type id ggml does not define.
const GgmlTypeTraits* ggml_type_traits(uint32_t type);
std::string ggml_type_name(uint32_t type); // "type 99" for an unknown id
// "f32", "f16", "bf16", "q8_0" → the type; nullopt for others.
std::optional<GgmlType> ggml_type_from_name(std::string_view name);

struct GgufTensorInfo {
	std::string name;
	uint32_t type = 0;          // GgmlType, or another type of ggml_type_traits
	std::vector<uint64_t> dims; // ggml order: dims[0] is the row length (contiguous)
	uint64_t offset = 0;        // relative to the data section
	uint64_t nbytes = 0;

	uint64_t numel() const;
};

constexpr uint32_t kGgufMaxDims = 4;
constexpr size_t kGgufMaxNameBytes = 63; // GGML_MAX_NAME - 1
constexpr uint64_t kGgufDefaultAlignment = 32;

struct GgufHeader {
	uint32_t version = 3;
	std::vector<std::pair<std::string, GgufValue>> metadata; // in file order
	std::vector<GgufTensorInfo> tensors;                     // in file order
	uint64_t alignment = kGgufDefaultAlignment;
	uint64_t data_offset = 0; // where the data section starts in the file

	const GgufValue* find(std::string_view key) const;
};

// Validates the bytes of a whole GGUF file (version 2 or 3). Every count, length, dimension and
// offset is checked against the file size before it is used. `label` names the file in errors.
GgufHeader parse_gguf(std::span<const uint8_t> file, const std::string& label);

// A memory-mapped, validated GGUF file.
class GgufFile {
public:
	explicit GgufFile(const std::filesystem::path& path);
	~GgufFile();
	GgufFile(const GgufFile&) = delete;
	GgufFile& operator=(const GgufFile&) = delete;

	const std::filesystem::path& path() const { return path_; }
	const GgufHeader& header() const { return header_; }
	const GgufTensorInfo* find(std::string_view name) const;
	std::span<const uint8_t> data(const GgufTensorInfo& tensor) const;
	// Drops the tensor's pages from this process's memory once read.
	void release(const GgufTensorInfo& tensor) const;

private:
	std::filesystem::path path_;
	const uint8_t* map_ = nullptr;
	size_t map_size_ = 0;
	GgufHeader header_;
	std::unordered_map<std::string_view, size_t> by_name_;
};

// --- writing ---

struct GgufTensorSpec {
	std::string name;
	GgmlType type = GgmlType::F32;
	std::vector<uint64_t> dims; // ggml order
};

// Bytes of a tensor of this type and shape (dims[0] a multiple of the type's block).
uint64_t ggml_nbytes(GgmlType type, const std::vector<uint64_t>& dims);

// The header of a GGUF v3 file with these metadata and tensors (data laid out in order, each
// tensor at a multiple of kGgufDefaultAlignment), and each tensor's offset in the data section.
struct GgufLayout {
	std::vector<uint8_t> header; // padded to the alignment: the data section starts right after
	std::vector<uint64_t> offsets;
	uint64_t file_size = 0;
};
GgufLayout plan_gguf_layout(const std::vector<std::pair<std::string, GgufValue>>& metadata,
                            const std::vector<GgufTensorSpec>& tensors);

// Writes a GGUF file: the header at once, then tensor bytes at any offsets, from any thread.
// finish() checks every byte of every tensor was written and closes the file; a writer dropped
// unfinished removes its file.
class GgufWriter {
public:
	GgufWriter(std::filesystem::path path, const std::vector<std::pair<std::string, GgufValue>>& metadata,
	           std::vector<GgufTensorSpec> tensors);
	~GgufWriter();
	GgufWriter(const GgufWriter&) = delete;
	GgufWriter& operator=(const GgufWriter&) = delete;

	const std::vector<GgufTensorSpec>& tensors() const { return tensors_; }
	// Writes bytes at byte_offset of the tensor's data.
	void write(size_t tensor, uint64_t byte_offset, std::span<const uint8_t> bytes);
	void finish();

private:
	std::filesystem::path path_;
	std::vector<GgufTensorSpec> tensors_;
	GgufLayout layout_;
	int fd_ = -1;
	std::unique_ptr<std::atomic<uint64_t>[]> written_;
};

} // namespace weld
