#include "io/gguf.h"

#include "io/safetensors.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_set>

namespace weld {
namespace {

constexpr size_t kMaxLabelBytes = 400;

[[noreturn]] void fail(const std::string& where, const std::string& what) {
	throw Error(fmt::format("{}: {}", where, what));
}

// a * b, or nullopt when it does not fit in 64 bits.
std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
	uint64_t r;
	if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
	return r;
}

std::optional<uint64_t> checked_pad(uint64_t value, uint64_t alignment) {
	uint64_t r;
	if (__builtin_add_overflow(value, alignment - 1, &r)) return std::nullopt;
	return r / alignment * alignment;
}

struct TypeEntry {
	uint32_t id;
	GgmlTypeTraits traits;
};
// ggml's type table (ggml.c type_traits): block size in elements and in bytes.
constexpr std::array<TypeEntry, 32> kTypes{{
    {0, {"f32", 1, 4}},         {1, {"f16", 1, 2}},         {2, {"q4_0", 32, 18}},      {3, {"q4_1", 32, 20}},
    {6, {"q5_0", 32, 22}},      {7, {"q5_1", 32, 24}},      {8, {"q8_0", 32, 34}},      {9, {"q8_1", 32, 36}},
    {10, {"q2_K", 256, 84}},    {11, {"q3_K", 256, 110}},   {12, {"q4_K", 256, 144}},   {13, {"q5_K", 256, 176}},
    {14, {"q6_K", 256, 210}},   {15, {"q8_K", 256, 292}},   {16, {"iq2_xxs", 256, 66}}, {17, {"iq2_xs", 256, 74}},
    {18, {"iq3_xxs", 256, 98}}, {19, {"iq1_s", 256, 50}},   {20, {"iq4_nl", 32, 18}},   {21, {"iq3_s", 256, 110}},
    {22, {"iq2_s", 256, 82}},   {23, {"iq4_xs", 256, 136}}, {24, {"i8", 1, 1}},         {25, {"i16", 1, 2}},
    {26, {"i32", 1, 4}},        {27, {"i64", 1, 8}},        {28, {"f64", 1, 8}},        {29, {"iq1_m", 256, 56}},
    {30, {"bf16", 1, 2}},       {34, {"tq1_0", 256, 54}},   {35, {"tq2_0", 256, 66}},   {39, {"mxfp4", 32, 17}},
}};

// Bytes of one value of a scalar metadata type; 0 for STRING and ARRAY (variable) or unknown.
uint64_t scalar_size(uint32_t type) {
	switch (static_cast<GgufType>(type)) {
	case GgufType::UINT8:
	case GgufType::INT8:
	case GgufType::BOOL:
		return 1;
	case GgufType::UINT16:
	case GgufType::INT16:
		return 2;
	case GgufType::UINT32:
	case GgufType::INT32:
	case GgufType::FLOAT32:
		return 4;
	case GgufType::UINT64:
	case GgufType::INT64:
	case GgufType::FLOAT64:
		return 8;
	default:
		return 0;
	}
}

bool is_known_type(uint32_t type) {
	return type <= static_cast<uint32_t>(GgufType::FLOAT64);
}

} // namespace

// --- values and types ---

uint64_t GgufValue::size() const {
	if (element == GgufType::STRING) return strings.size();
	if (element == GgufType::FLOAT32 || element == GgufType::FLOAT64) return floats.size();
	return ints.size();
}

GgufValue GgufValue::string(std::string text) {
	GgufValue v;
	v.element = GgufType::STRING;
	v.strings.push_back(std::move(text));
	return v;
}
GgufValue GgufValue::uint32(uint32_t value) {
	GgufValue v;
	v.element = GgufType::UINT32;
	v.ints.push_back(value);
	return v;
}
GgufValue GgufValue::int32(int32_t value) {
	GgufValue v;
	v.element = GgufType::INT32;
	v.ints.push_back(value);
	return v;
}
GgufValue GgufValue::float32(float value) {
	GgufValue v;
	v.element = GgufType::FLOAT32;
	v.floats.push_back(value);
	return v;
}
GgufValue GgufValue::boolean(bool value) {
	GgufValue v;
	v.element = GgufType::BOOL;
	v.ints.push_back(value ? 1 : 0);
	return v;
}
GgufValue GgufValue::string_array(std::vector<std::string> values) {
	GgufValue v;
	v.is_array = true;
	v.element = GgufType::STRING;
	v.strings = std::move(values);
	return v;
}
GgufValue GgufValue::int32_array(std::vector<int64_t> values) {
	GgufValue v;
	v.is_array = true;
	v.element = GgufType::INT32;
	v.ints = std::move(values);
	return v;
}
GgufValue GgufValue::float32_array(std::vector<double> values) {
	GgufValue v;
	v.is_array = true;
	v.element = GgufType::FLOAT32;
	v.floats = std::move(values);
	return v;
}

const GgmlTypeTraits* ggml_type_traits(uint32_t type) {
	for (const auto& entry : kTypes)
		if (entry.id == type) return &entry.traits;
	return nullptr;
}

std::string ggml_type_name(uint32_t type) {
	const auto* traits = ggml_type_traits(type);
	return traits ? std::string(traits->name) : fmt::format("type {}", type);
}

std::optional<GgmlType> ggml_type_from_name(std::string_view name) {
	for (auto type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0})
		if (ggml_type_traits(static_cast<uint32_t>(type))->name == name) return type;
	return std::nullopt;
}

uint64_t GgufTensorInfo::numel() const {
	uint64_t n = 1;
	for (auto d : dims)
		n *= d;
	return n;
}

const GgufValue* GgufHeader::find(std::string_view key) const {
	for (const auto& [k, v] : metadata)
		if (k == key) return &v;
	return nullptr;
}

// --- reading ---
//
// GGUF (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md; ggml/src/gguf.cpp), all
// integers little-endian:
//
//   uint32 magic "GGUF" (the bytes 'G' 'G' 'U' 'F')
//   uint32 version            3 (2 is the same layout; 1, with 32-bit counts, is refused)
//   uint64 n_tensors
//   uint64 n_kv
//   n_kv times a key/value:
//     string key              uint64 length, then that many bytes of UTF-8 (no terminating 0)
//     uint32 value type       0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool (1 byte),
//                             8 string, 9 array, 10 u64, 11 i64, 12 f64
//     the value               an array is: uint32 element type, uint64 count, the elements
//                             (arrays of arrays are refused, as ggml does)
//   n_tensors times a tensor info:
//     string name             at most 63 bytes (GGML_MAX_NAME), unique
//     uint32 n_dims           1..4
//     uint64 ne[n_dims]       ggml order: ne[0] is the contiguous row length (HF's last axis)
//     uint32 ggml type        0 f32, 1 f16, 8 q8_0, 30 bf16, ... (block size and bytes per block)
//     uint64 offset           relative to the data section, a multiple of the alignment
//   padding to the alignment (general.alignment, a uint32 power of two; default 32)
//   the data section: each tensor's bytes, ne[0] / block * block bytes * ne[1] * ne[2] * ne[3]
//
// The reader trusts none of it: every count and length is checked against the bytes left before
// anything is allocated or looped over, dimension products are overflow-checked, and every
// tensor must lie inside the data section without overlapping another.

namespace {

class Reader {
public:
	Reader(std::span<const uint8_t> file, std::string where) : file_(file), where_(std::move(where)) {}

	uint64_t left() const { return file_.size() - pos_; }
	uint64_t pos() const { return pos_; }
	const std::string& where() const { return where_; }

	[[noreturn]] void fail_at(const std::string& field, const std::string& what) const {
		fail(where_, fmt::format("{}: {}", field, what));
	}

	template <typename T> T read(const std::string& field) {
		if (left() < sizeof(T))
			fail_at(field,
			        fmt::format("the file ends at byte {} before it ({} bytes needed)", file_.size(), sizeof(T)));
		T value;
		std::memcpy(&value, file_.data() + pos_, sizeof(T));
		pos_ += sizeof(T);
		return value;
	}

	std::string read_string(const std::string& field) {
		const auto length = read<uint64_t>(field + " length");
		if (length > left())
			fail_at(field, fmt::format("string length {} is past the end of the file ({} bytes left)", length, left()));
		std::string s(reinterpret_cast<const char*>(file_.data() + pos_), static_cast<size_t>(length));
		pos_ += length;
		return s;
	}

	// A count of items of at least min_item_bytes each, checked against the bytes left.
	uint64_t read_count(const std::string& field, uint64_t min_item_bytes) {
		const auto count = read<uint64_t>(field);
		const auto bytes = checked_mul(count, min_item_bytes);
		if (!bytes || *bytes > left())
			fail_at(field, fmt::format("{} does not fit in the {} bytes left in the file", count, left()));
		return count;
	}

private:
	std::span<const uint8_t> file_;
	std::string where_;
	uint64_t pos_ = 0;
};

void read_scalar(Reader& in, uint32_t type, GgufValue& value, const std::string& field) {
	switch (static_cast<GgufType>(type)) {
	case GgufType::UINT8:
		value.ints.push_back(in.read<uint8_t>(field));
		break;
	case GgufType::INT8:
		value.ints.push_back(in.read<int8_t>(field));
		break;
	case GgufType::UINT16:
		value.ints.push_back(in.read<uint16_t>(field));
		break;
	case GgufType::INT16:
		value.ints.push_back(in.read<int16_t>(field));
		break;
	case GgufType::UINT32:
		value.ints.push_back(in.read<uint32_t>(field));
		break;
	case GgufType::INT32:
		value.ints.push_back(in.read<int32_t>(field));
		break;
	case GgufType::UINT64:
		value.ints.push_back(static_cast<int64_t>(in.read<uint64_t>(field)));
		break;
	case GgufType::INT64:
		value.ints.push_back(in.read<int64_t>(field));
		break;
	case GgufType::FLOAT32:
		value.floats.push_back(in.read<float>(field));
		break;
	case GgufType::FLOAT64:
		value.floats.push_back(in.read<double>(field));
		break;
	case GgufType::BOOL: {
		const auto b = in.read<uint8_t>(field);
		if (b > 1) in.fail_at(field, fmt::format("boolean value {} is neither 0 nor 1", b));
		value.ints.push_back(b);
		break;
	}
	case GgufType::STRING:
		value.strings.push_back(in.read_string(field));
		break;
	default:
		in.fail_at(field, fmt::format("unknown value type {}", type));
	}
}

GgufValue read_value(Reader& in, const std::string& key) {
	const std::string field = fmt::format("metadata {}", quote_for_message(key));
	const auto type = in.read<uint32_t>(field + " type");
	if (!is_known_type(type)) in.fail_at(field, fmt::format("unknown value type {}", type));
	GgufValue value;
	value.element = static_cast<GgufType>(type);
	if (value.element != GgufType::ARRAY) {
		read_scalar(in, type, value, field);
		return value;
	}
	value.is_array = true;
	const auto element = in.read<uint32_t>(field + " array type");
	if (element == static_cast<uint32_t>(GgufType::ARRAY)) in.fail_at(field, "arrays of arrays are not supported");
	if (!is_known_type(element)) in.fail_at(field, fmt::format("unknown array element type {}", element));
	value.element = static_cast<GgufType>(element);
	// A string is at least its 8-byte length.
	const uint64_t min_bytes = value.element == GgufType::STRING ? 8 : scalar_size(element);
	const auto count = in.read_count(field + " array length", min_bytes);
	for (uint64_t i = 0; i < count; i++)
		read_scalar(in, element, value, field);
	return value;
}

uint64_t read_alignment(const GgufHeader& header, const Reader& in) {
	const auto* value = header.find("general.alignment");
	if (!value) return kGgufDefaultAlignment;
	if (value->is_array || value->element != GgufType::UINT32)
		in.fail_at("metadata 'general.alignment'", "must be a uint32");
	const auto alignment = static_cast<uint64_t>(value->ints[0]);
	if (alignment == 0 || (alignment & (alignment - 1)) != 0)
		in.fail_at("metadata 'general.alignment'", fmt::format("{} is not a power of two", alignment));
	return alignment;
}

GgufTensorInfo read_tensor_info(Reader& in, uint64_t index) {
	GgufTensorInfo t;
	t.name = in.read_string(fmt::format("tensor {} name", index));
	const std::string field = fmt::format("tensor {}", quote_for_message(t.name));
	if (t.name.size() > kGgufMaxNameBytes)
		in.fail_at(field, fmt::format("name is {} bytes, more than ggml's {}", t.name.size(), kGgufMaxNameBytes));
	const auto n_dims = in.read<uint32_t>(field + " n_dims");
	if (n_dims == 0 || n_dims > kGgufMaxDims) in.fail_at(field, fmt::format("{} dimensions (1 to 4 allowed)", n_dims));
	for (uint32_t d = 0; d < n_dims; d++) {
		const auto ne = in.read<uint64_t>(field + " dims");
		if (ne > static_cast<uint64_t>(INT64_MAX)) in.fail_at(field, fmt::format("dimension {} is negative", d));
		t.dims.push_back(ne);
	}
	t.type = in.read<uint32_t>(field + " type");
	t.offset = in.read<uint64_t>(field + " offset");
	return t;
}

// The tensor's byte size from its type and dims, with every product overflow-checked.
uint64_t tensor_nbytes(const GgufTensorInfo& t, const Reader& in) {
	const std::string field = fmt::format("tensor {}", quote_for_message(t.name));
	const auto* traits = ggml_type_traits(t.type);
	if (!traits) in.fail_at(field, fmt::format("unknown tensor type {}", t.type));
	if (t.dims[0] % traits->block_elements != 0)
		in.fail_at(field, fmt::format("row length {} is not a multiple of {}'s block of {}", t.dims[0], traits->name,
		                              traits->block_elements));
	std::optional<uint64_t> bytes = t.dims[0] / traits->block_elements * traits->block_bytes;
	std::optional<uint64_t> numel = t.dims[0];
	for (size_t d = 1; d < t.dims.size() && bytes && numel; d++) {
		bytes = checked_mul(*bytes, t.dims[d]);
		numel = checked_mul(*numel, t.dims[d]);
	}
	if (!bytes || !numel || *numel > static_cast<uint64_t>(INT64_MAX)) in.fail_at(field, "dimensions overflow 64 bits");
	return *bytes;
}

// Every tensor aligned, inside the data section, and none overlapping another.
void check_tensor_data(std::vector<GgufTensorInfo>& tensors, uint64_t data_bytes, uint64_t alignment,
                       const Reader& in) {
	std::vector<const GgufTensorInfo*> by_offset;
	for (auto& t : tensors) {
		const std::string field = fmt::format("tensor {}", quote_for_message(t.name));
		t.nbytes = tensor_nbytes(t, in);
		if (t.offset % alignment != 0)
			in.fail_at(field, fmt::format("offset {} is not a multiple of the alignment {}", t.offset, alignment));
		if (t.offset > data_bytes || t.nbytes > data_bytes - t.offset)
			in.fail_at(field, fmt::format("data [{}, {}+{}) is past the end of the data section ({} bytes)", t.offset,
			                              t.offset, t.nbytes, data_bytes));
		by_offset.push_back(&t);
	}
	std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
	for (size_t i = 1; i < by_offset.size(); i++)
		if (by_offset[i - 1]->offset + by_offset[i - 1]->nbytes > by_offset[i]->offset)
			in.fail_at(fmt::format("tensor {}", quote_for_message(by_offset[i]->name)),
			           fmt::format("data overlaps tensor {}", quote_for_message(by_offset[i - 1]->name)));
}

} // namespace

GgufHeader parse_gguf(std::span<const uint8_t> file, const std::string& label) {
	Reader in(file, escape_for_message(label, kMaxLabelBytes));
	GgufHeader header;
	const auto magic = in.read<uint32_t>("magic");
	if (std::memcmp(&magic, "GGUF", 4) != 0) in.fail_at("magic", "not a GGUF file (it does not start with 'GGUF')");
	header.version = in.read<uint32_t>("version");
	if (header.version != 2 && header.version != 3)
		in.fail_at("version", fmt::format("{} is not supported (2 and 3 are)", header.version));
	// A tensor info is at least 8 (name length) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset)
	// bytes; a key/value at least 8 (key length) + 4 (type) + 1 (value).
	const auto n_tensors = in.read<uint64_t>("tensor count");
	const auto n_kv = in.read_count("metadata count", 13);
	if (!checked_mul(n_tensors, 32) || n_tensors * 32 > in.left())
		in.fail_at("tensor count",
		           fmt::format("{} does not fit in the {} bytes left in the file", n_tensors, in.left()));
	std::unordered_set<std::string> keys;
	for (uint64_t i = 0; i < n_kv; i++) {
		auto key = in.read_string(fmt::format("metadata key {}", i));
		if (!keys.insert(key).second) in.fail_at(fmt::format("metadata {}", quote_for_message(key)), "duplicate key");
		auto value = read_value(in, key);
		header.metadata.emplace_back(std::move(key), std::move(value));
	}
	if (n_tensors * 32 > in.left())
		in.fail_at("tensor count",
		           fmt::format("{} does not fit in the {} bytes left in the file", n_tensors, in.left()));
	std::unordered_set<std::string> names;
	for (uint64_t i = 0; i < n_tensors; i++) {
		header.tensors.push_back(read_tensor_info(in, i));
		if (!names.insert(header.tensors.back().name).second)
			in.fail_at(fmt::format("tensor {}", quote_for_message(header.tensors.back().name)), "duplicate name");
	}
	header.alignment = read_alignment(header, in);
	const auto data_offset = checked_pad(in.pos(), header.alignment);
	if (!data_offset || *data_offset > file.size())
		in.fail_at("data section", fmt::format("starts past the end of the file ({} bytes)", file.size()));
	header.data_offset = *data_offset;
	check_tensor_data(header.tensors, file.size() - header.data_offset, header.alignment, in);
	return header;
}

GgufFile::GgufFile(const std::filesystem::path& path) : path_(path) {
	const std::string where = escape_for_message(path.string(), kMaxLabelBytes);
	const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0) fail(where, fmt::format("cannot open: {}", std::strerror(errno)));
	struct stat st {};
	if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
		::close(fd);
		fail(where, "not a regular, non-empty file");
	}
	map_size_ = static_cast<size_t>(st.st_size);
	void* map = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
	const int map_errno = errno;
	::close(fd);
	if (map == MAP_FAILED) fail(where, fmt::format("cannot mmap: {}", std::strerror(map_errno)));
	map_ = static_cast<const uint8_t*>(map);
	try {
		header_ = parse_gguf({map_, map_size_}, path.string());
	} catch (...) {
		::munmap(const_cast<uint8_t*>(map_), map_size_);
		throw;
	}
	for (size_t i = 0; i < header_.tensors.size(); ++i)
		by_name_.emplace(header_.tensors[i].name, i);
}

GgufFile::~GgufFile() {
	if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
}

const GgufTensorInfo* GgufFile::find(std::string_view name) const {
	auto it = by_name_.find(name);
	return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

std::span<const uint8_t> GgufFile::data(const GgufTensorInfo& tensor) const {
	return {map_ + header_.data_offset + tensor.offset, tensor.nbytes};
}

void GgufFile::release(const GgufTensorInfo& tensor) const {
	static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
	const auto begin = reinterpret_cast<uintptr_t>(map_ + header_.data_offset + tensor.offset);
	const uintptr_t first = (begin + page - 1) / page * page, last = (begin + tensor.nbytes) / page * page;
	if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

// --- writing ---

namespace {

class HeaderBytes {
public:
	template <typename T> void put(T value) {
		const auto* p = reinterpret_cast<const uint8_t*>(&value);
		bytes.insert(bytes.end(), p, p + sizeof(T));
	}
	void put_string(std::string_view s) {
		put<uint64_t>(s.size());
		bytes.insert(bytes.end(), s.begin(), s.end());
	}
	void put_element(const GgufValue& v, size_t i) {
		switch (v.element) {
		case GgufType::UINT8:
		case GgufType::INT8:
		case GgufType::BOOL:
			put<uint8_t>(static_cast<uint8_t>(v.ints[i]));
			break;
		case GgufType::UINT16:
		case GgufType::INT16:
			put<uint16_t>(static_cast<uint16_t>(v.ints[i]));
			break;
		case GgufType::UINT32:
		case GgufType::INT32:
			put<uint32_t>(static_cast<uint32_t>(v.ints[i]));
			break;
		case GgufType::UINT64:
		case GgufType::INT64:
			put<uint64_t>(static_cast<uint64_t>(v.ints[i]));
			break;
		case GgufType::FLOAT32:
			put<float>(static_cast<float>(v.floats[i]));
			break;
		case GgufType::FLOAT64:
			put<double>(v.floats[i]);
			break;
		case GgufType::STRING:
			put_string(v.strings[i]);
			break;
		case GgufType::ARRAY:
			break; // never an element type
		}
	}
	void put_value(const GgufValue& v) {
		if (v.is_array) {
			put<uint32_t>(static_cast<uint32_t>(GgufType::ARRAY));
			put<uint32_t>(static_cast<uint32_t>(v.element));
			put<uint64_t>(v.size());
		} else {
			put<uint32_t>(static_cast<uint32_t>(v.element));
		}
		for (size_t i = 0; i < v.size(); i++)
			put_element(v, i);
	}

	std::vector<uint8_t> bytes;
};

} // namespace

uint64_t ggml_nbytes(GgmlType type, const std::vector<uint64_t>& dims) {
	const auto* traits = ggml_type_traits(static_cast<uint32_t>(type));
	uint64_t bytes = dims.empty() ? traits->block_bytes : dims[0] / traits->block_elements * traits->block_bytes;
	for (size_t d = 1; d < dims.size(); d++)
		bytes *= dims[d];
	return bytes;
}

GgufLayout plan_gguf_layout(const std::vector<std::pair<std::string, GgufValue>>& metadata,
                            const std::vector<GgufTensorSpec>& tensors) {
	HeaderBytes h;
	h.put<uint32_t>(0x46554747); // "GGUF"
	h.put<uint32_t>(3);
	h.put<uint64_t>(tensors.size());
	h.put<uint64_t>(metadata.size());
	for (const auto& [key, value] : metadata) {
		h.put_string(key);
		h.put_value(value);
	}
	GgufLayout layout;
	uint64_t offset = 0;
	for (const auto& t : tensors) {
		h.put_string(t.name);
		h.put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
		for (auto d : t.dims)
			h.put<uint64_t>(d);
		h.put<uint32_t>(static_cast<uint32_t>(t.type));
		h.put<uint64_t>(offset);
		layout.offsets.push_back(offset);
		offset = *checked_pad(offset + ggml_nbytes(t.type, t.dims), kGgufDefaultAlignment);
	}
	h.bytes.resize(*checked_pad(h.bytes.size(), kGgufDefaultAlignment), 0);
	layout.header = std::move(h.bytes);
	layout.file_size = layout.header.size() + offset;
	return layout;
}

namespace {

void pwrite_all(int fd, const uint8_t* data, uint64_t size, uint64_t offset, const std::string& where) {
	while (size > 0) {
		const size_t chunk = static_cast<size_t>(std::min<uint64_t>(size, 1u << 30));
		const ssize_t n = ::pwrite(fd, data, chunk, static_cast<off_t>(offset));
		if (n < 0 && errno == EINTR) continue;
		if (n <= 0) fail(where, fmt::format("write failed: {}", n < 0 ? std::strerror(errno) : "no progress"));
		data += n;
		size -= static_cast<uint64_t>(n);
		offset += static_cast<uint64_t>(n);
	}
}

} // namespace

GgufWriter::GgufWriter(std::filesystem::path path, const std::vector<std::pair<std::string, GgufValue>>& metadata,
                       std::vector<GgufTensorSpec> tensors)
    : path_(std::move(path)), tensors_(std::move(tensors)) {
	const std::string where = escape_for_message(path_.string(), kMaxLabelBytes);
	for (const auto& t : tensors_)
		if (t.name.size() > kGgufMaxNameBytes)
			fail(where, fmt::format("tensor name {} is longer than ggml's {} bytes", quote_for_message(t.name),
			                        kGgufMaxNameBytes));
	layout_ = plan_gguf_layout(metadata, tensors_);
	written_ = std::make_unique<std::atomic<uint64_t>[]>(tensors_.size());
	fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd_ < 0) fail(where, fmt::format("cannot create: {}", std::strerror(errno)));
	pwrite_all(fd_, layout_.header.data(), layout_.header.size(), 0, where);
	if (::ftruncate(fd_, static_cast<off_t>(layout_.file_size)) != 0)
		fail(where, fmt::format("cannot size to {} bytes: {}", layout_.file_size, std::strerror(errno)));
}

GgufWriter::~GgufWriter() {
	if (fd_ < 0) return;
	::close(fd_);
	std::error_code ignored;
	std::filesystem::remove(path_, ignored);
}

void GgufWriter::write(size_t tensor, uint64_t byte_offset, std::span<const uint8_t> bytes) {
	const uint64_t nbytes = ggml_nbytes(tensors_[tensor].type, tensors_[tensor].dims);
	const std::string where = escape_for_message(path_.string(), kMaxLabelBytes);
	if (byte_offset > nbytes || bytes.size() > nbytes - byte_offset)
		fail(where, fmt::format("tensor {}: write past its end", quote_for_message(tensors_[tensor].name)));
	pwrite_all(fd_, bytes.data(), bytes.size(), layout_.header.size() + layout_.offsets[tensor] + byte_offset, where);
	written_[tensor] += bytes.size();
}

void GgufWriter::finish() {
	const std::string where = escape_for_message(path_.string(), kMaxLabelBytes);
	for (size_t i = 0; i < tensors_.size(); i++)
		if (written_[i] != ggml_nbytes(tensors_[i].type, tensors_[i].dims))
			fail(where, fmt::format("tensor {} was not completely written", quote_for_message(tensors_[i].name)));
	const int fd = fd_;
	fd_ = -1;
	if (::close(fd) != 0) fail(where, fmt::format("cannot close: {}", std::strerror(errno)));
}

} // namespace weld
