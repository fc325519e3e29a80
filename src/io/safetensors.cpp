#include "io/safetensors.h"

#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <optional>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_set>
#include <utility>

namespace weld {
namespace {

using nlohmann::json;

constexpr size_t kMaxLabelBytes = 400; // paths may be long, but not unbounded
constexpr size_t kMaxJsonErrorBytes = 200;

[[noreturn]] void fail(const std::string& where, const std::string& what) {
	throw Error(where + ": " + what);
}

// --- overflow-checked size maths ---

std::optional<uint64_t> checked_add(uint64_t a, uint64_t b) {
	uint64_t r = 0;
	if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
	return r;
}

std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
	uint64_t r = 0;
	if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
	return r;
}

std::optional<uint64_t> checked_numel(const std::vector<uint64_t>& shape) {
	std::optional<uint64_t> n = 1;
	for (uint64_t d : shape)
		if (!(n = checked_mul(*n, d))) return std::nullopt;
	return n;
}

std::optional<uint64_t> checked_nbytes(const std::vector<uint64_t>& shape, DType dtype) {
	auto n = checked_numel(shape);
	return n ? checked_mul(*n, dtype_size(dtype)) : std::nullopt;
}

std::string shape_string(const std::vector<uint64_t>& shape) {
	return fmt::format("[{}]", fmt::join(shape, ", "));
}

// --- message escaping ---

// Length of the valid UTF-8 sequence starting at s[i] and its code point; 0 when invalid.
size_t utf8_sequence(std::string_view s, size_t i, uint32_t& cp) {
	const auto b = [&](size_t k) { return static_cast<uint8_t>(s[i + k]); };
	const uint8_t c = b(0);
	size_t len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
	if (len == 0 || i + len > s.size()) return 0;
	cp = c & (0xFF >> (len + 1));
	for (size_t k = 1; k < len; ++k) {
		if ((b(k) & 0xC0) != 0x80) return 0;
		cp = (cp << 6) | (b(k) & 0x3F);
	}
	const bool overlong = (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
	if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
	return len;
}

// C1 controls and invisible or direction-changing characters that could disguise a message.
bool is_deceptive(uint32_t cp) {
	return (cp >= 0x80 && cp <= 0x9F) || (cp >= 0x200B && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202E) ||
	       (cp >= 0x2060 && cp <= 0x2069) || cp == 0xFEFF;
}

// --- JSON with duplicate keys rejected ---

std::string json_error_text(const json::exception& e) {
	std::string_view what = e.what();
	if (auto close = what.find("] "); what.starts_with("[json.exception") && close != std::string_view::npos)
		what.remove_prefix(close + 2); // the "[json.exception.parse_error.101] " tag helps nobody
	return escape_for_message(what, kMaxJsonErrorBytes);
}

// nlohmann keeps the last of duplicate keys silently; a header whose readers disagree on which
// entry wins is an attack surface, so duplicates are an error at every depth.
json parse_json_strict(std::string_view text, const std::string& where, std::string_view what) {
	std::vector<std::unordered_set<std::string>> open_objects;
	std::optional<std::string> duplicate;
	auto callback = [&](int, json::parse_event_t event, json& parsed) {
		if (event == json::parse_event_t::object_start)
			open_objects.emplace_back();
		else if (event == json::parse_event_t::object_end)
			open_objects.pop_back();
		else if (event == json::parse_event_t::key && !duplicate &&
		         !open_objects.back().insert(parsed.get<std::string>()).second)
			duplicate = parsed.get<std::string>();
		return true;
	};
	json j;
	try {
		j = json::parse(text.begin(), text.end(), callback);
	} catch (const json::exception& e) {
		fail(where, fmt::format("invalid JSON in {}: {}", what, json_error_text(e)));
	}
	if (duplicate) fail(where, fmt::format("duplicate key {} in {}", quote_for_message(*duplicate), what));
	return j;
}

std::string json_type_phrase(const json& v) {
	if (v.is_number_float()) return "a float";
	if (v.is_number()) return "an integer";
	if (v.is_string()) return "a string";
	if (v.is_boolean()) return "a boolean";
	if (v.is_null()) return "null";
	if (v.is_array()) return "an array";
	return "an object";
}

// --- header parsing ---

uint64_t read_u64_le(const uint8_t* p) {
	uint64_t v = 0;
	for (int i = 7; i >= 0; --i)
		v = (v << 8) | p[i];
	return v;
}

void parse_metadata(const json& value, const std::string& where, SafetensorsHeader& out) {
	if (value.is_null()) return;
	if (!value.is_object()) fail(where, fmt::format("'__metadata__' is {}, not an object", json_type_phrase(value)));
	for (const auto& [key, v] : value.items()) {
		if (!v.is_string())
			fail(where, fmt::format("'__metadata__' entry {} is {}, not a string", quote_for_message(key),
			                        json_type_phrase(v)));
		out.metadata.emplace_back(key, v.get<std::string>());
	}
}

uint64_t parse_dim(const json& v, const std::string& what) {
	if (v.is_number_unsigned()) return v.get<uint64_t>();
	if (v.is_number_integer()) throw Error(fmt::format("{} is {}, not a non-negative integer", what, v.get<int64_t>()));
	throw Error(fmt::format("{} is {}, not a non-negative integer", what, json_type_phrase(v)));
}

// The fields of one tensor entry; throws Error with the field phrase only (the caller adds where).
TensorInfo parse_tensor_fields(const std::string& name, const json& entry) {
	if (!entry.is_object()) throw Error(fmt::format("entry is {}, not an object", json_type_phrase(entry)));
	TensorInfo t;
	t.name = name;
	auto dtype = entry.find("dtype");
	if (dtype == entry.end()) throw Error("missing 'dtype'");
	if (!dtype->is_string()) throw Error(fmt::format("'dtype' is {}, not a string", json_type_phrase(*dtype)));
	auto dt = dtype_from_safetensors_name(dtype->get_ref<const std::string&>());
	if (!dt) throw Error(fmt::format("unknown dtype {}", quote_for_message(dtype->get_ref<const std::string&>())));
	t.dtype = *dt;
	auto shape = entry.find("shape");
	if (shape == entry.end()) throw Error("missing 'shape'");
	if (!shape->is_array()) throw Error(fmt::format("'shape' is {}, not an array", json_type_phrase(*shape)));
	for (size_t i = 0; i < shape->size(); ++i)
		t.shape.push_back(parse_dim((*shape)[i], fmt::format("shape[{}]", i)));
	auto offsets = entry.find("data_offsets");
	if (offsets == entry.end()) throw Error("missing 'data_offsets'");
	if (!offsets->is_array() || offsets->size() != 2) throw Error("'data_offsets' is not a [begin, end] pair");
	t.data_begin = parse_dim((*offsets)[0], "data_offsets[0]");
	t.data_end = parse_dim((*offsets)[1], "data_offsets[1]");
	return t;
}

void check_tensor_size(const TensorInfo& t) {
	const std::string offsets = fmt::format("data_offsets [{}, {}]", t.data_begin, t.data_end);
	auto needed = checked_nbytes(t.shape, t.dtype);
	if (!needed)
		throw Error(fmt::format("shape {} of {} overflows a 64-bit byte count", shape_string(t.shape),
		                        dtype_safetensors_name(t.dtype)));
	if (t.data_end < t.data_begin) throw Error(offsets + " end before begin");
	if (t.data_end - t.data_begin != *needed)
		throw Error(fmt::format("{} span {} bytes but shape {} of {} needs {}", offsets, t.data_end - t.data_begin,
		                        shape_string(t.shape), dtype_safetensors_name(t.dtype), *needed));
}

// Rule 5: sorted by offsets, the tensors cover [0, region) exactly once.
void check_tiling(std::vector<TensorInfo>& tensors, uint64_t region, const std::string& where) {
	std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
		return std::tie(a.data_begin, a.data_end, a.name) < std::tie(b.data_begin, b.data_end, b.name);
	});
	uint64_t end = 0;
	const TensorInfo* prev = nullptr;
	for (const auto& t : tensors) {
		if (t.data_begin < end)
			fail(where, fmt::format("tensor {}: data_offsets [{}, {}] overlap tensor {} at [{}, {}]",
			                        quote_for_message(t.name), t.data_begin, t.data_end, quote_for_message(prev->name),
			                        prev->data_begin, prev->data_end));
		if (t.data_begin > end)
			fail(where, fmt::format("tensor {}: hole of {} bytes in the data region before data_offsets [{}, {}]",
			                        quote_for_message(t.name), t.data_begin - end, t.data_begin, t.data_end));
		end = t.data_end;
		prev = &t;
	}
	if (end > region)
		fail(where, fmt::format("data region is {} bytes, shorter than the {} bytes the tensors need", region, end));
	if (end < region)
		fail(where, fmt::format("data region is {} bytes, longer than the {} bytes the tensors use", region, end));
}

} // namespace

std::string escape_for_message(std::string_view text, size_t max_bytes) {
	std::string out;
	for (size_t i = 0; i < text.size();) {
		if (out.size() >= max_bytes) return out + "...";
		const auto c = static_cast<uint8_t>(text[i]);
		uint32_t cp = 0;
		if (c >= 0x20 && c < 0x7F && c != '\\') {
			out += static_cast<char>(c);
			++i;
		} else if (size_t len = c >= 0x80 ? utf8_sequence(text, i, cp) : 0; len > 0 && !is_deceptive(cp)) {
			out.append(text.substr(i, len));
			i += len;
		} else {
			out += c == '\\' ? std::string("\\\\") : fmt::format("\\x{:02x}", c);
			++i;
		}
	}
	return out;
}

std::string quote_for_message(std::string_view text) {
	return fmt::format("'{}'", escape_for_message(text));
}

uint64_t TensorInfo::numel() const {
	auto n = checked_numel(shape);
	if (!n)
		throw Error(fmt::format("tensor {}: shape {} overflows 64 bits", quote_for_message(name), shape_string(shape)));
	return *n;
}

uint64_t OutputTensorSpec::nbytes() const {
	auto n = checked_nbytes(shape, dtype);
	if (!n)
		throw Error(fmt::format("output tensor {}: shape {} of {} overflows a 64-bit byte count",
		                        quote_for_message(name), shape_string(shape), dtype_safetensors_name(dtype)));
	return *n;
}

SafetensorsHeader parse_safetensors(std::span<const uint8_t> file, const std::string& label) {
	const std::string where = escape_for_message(label, kMaxLabelBytes);
	if (file.size() < 8)
		fail(where,
		     fmt::format("file is {} bytes, too short for a safetensors header (needs at least 8)", file.size()));
	const uint64_t n = read_u64_le(file.data());
	if (n > kMaxHeaderBytes)
		fail(where, fmt::format("header length {} exceeds the limit of {} bytes", n, kMaxHeaderBytes));
	auto header_end = checked_add(8, n);
	if (!header_end || *header_end > file.size())
		fail(where, fmt::format("header length {} runs past the end of the file ({} bytes)", n, file.size()));
	const std::string_view text(reinterpret_cast<const char*>(file.data()) + 8, n);
	if (text.empty() || text.front() != '{') fail(where, "header does not start with '{'");
	const json j = parse_json_strict(text, where, "header");

	SafetensorsHeader out;
	out.data_offset = *header_end;
	for (const auto& [name, entry] : j.items()) {
		if (name == "__metadata__") {
			parse_metadata(entry, where, out);
			continue;
		}
		try {
			out.tensors.push_back(parse_tensor_fields(name, entry));
			check_tensor_size(out.tensors.back());
		} catch (const Error& e) {
			fail(where, fmt::format("tensor {}: {}", quote_for_message(name), e.what()));
		}
	}
	check_tiling(out.tensors, file.size() - out.data_offset, where);
	return out;
}

// --- SafetensorsFile ---

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : path_(path) {
	const std::string where = escape_for_message(path.string(), kMaxLabelBytes);
	const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0) fail(where, fmt::format("cannot open: {}", std::strerror(errno)));
	struct stat st {};
	if (::fstat(fd, &st) != 0) {
		const int err = errno;
		::close(fd);
		fail(where, fmt::format("cannot stat: {}", std::strerror(err)));
	}
	if (!S_ISREG(st.st_mode)) {
		::close(fd);
		fail(where, "not a regular file");
	}
	if (st.st_size == 0) {
		::close(fd);
		fail(where, "file is empty (0 bytes), not a safetensors file");
	}
	map_size_ = static_cast<size_t>(st.st_size);
	void* map = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
	const int map_errno = errno;
	::close(fd); // the mapping keeps the file alive
	if (map == MAP_FAILED) fail(where, fmt::format("cannot mmap: {}", std::strerror(map_errno)));
	map_ = static_cast<const uint8_t*>(map);
	try {
		header_ = parse_safetensors({map_, map_size_}, path.string());
	} catch (...) {
		::munmap(const_cast<uint8_t*>(map_), map_size_);
		throw;
	}
	for (size_t i = 0; i < header_.tensors.size(); ++i)
		by_name_.emplace(header_.tensors[i].name, i);
}

SafetensorsFile::~SafetensorsFile() {
	if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
	auto it = by_name_.find(name);
	return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

std::span<const uint8_t> SafetensorsFile::data(const TensorInfo& tensor) const {
	return {map_ + header_.data_offset + tensor.data_begin, tensor.nbytes()};
}

void SafetensorsFile::release(const TensorInfo& tensor) const {
	release_range(tensor, 0, tensor.nbytes());
}

void SafetensorsFile::release_range(const TensorInfo& tensor, uint64_t offset, uint64_t bytes) const {
	// Only whole pages inside the range: neighbours may still be in use. The pages stay in the
	// page cache; a later read maps them again.
	static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
	const auto begin = reinterpret_cast<uintptr_t>(map_ + header_.data_offset + tensor.data_begin + offset);
	const uintptr_t first = (begin + page - 1) / page * page, last = (begin + bytes) / page * page;
	if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

void SafetensorsFile::prefetch(const TensorInfo& tensor, bool map_now) const {
	static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
	const auto begin = reinterpret_cast<uintptr_t>(map_ + header_.data_offset + tensor.data_begin);
	const uintptr_t first = begin / page * page;
	auto* start = reinterpret_cast<void*>(first);
	const size_t length = begin + tensor.nbytes() - first;
#ifdef MADV_POPULATE_READ
	// One call maps every page, instead of a page fault per few pages on first touch. Only a hint:
	// kernels before 5.14 refuse it, and then pages fault in as usual.
	if (map_now && ::madvise(start, length, MADV_POPULATE_READ) == 0) return;
#else
	(void)map_now;
#endif
	::madvise(start, length, MADV_WILLNEED);
}

// --- index ---

namespace {

// Shard files must stay inside the model folder: relative, no "..", no backslashes.
std::string check_shard_name(const std::string& shard, const std::string& tensor, const std::string& where) {
	const auto bad = [&](std::string_view why) {
		fail(where, fmt::format("weight_map entry {}: shard file {} {}", quote_for_message(tensor),
		                        quote_for_message(shard), why));
	};
	if (shard.empty()) bad("is empty");
	if (shard.front() == '/') bad("is an absolute path");
	if (shard.find('\\') != std::string::npos) bad("contains a backslash");
	if (shard.find('\0') != std::string::npos) bad("contains a NUL byte");
	const std::filesystem::path p(shard);
	for (const auto& part : p)
		if (part == "..") bad("leaves the model folder ('..')");
	const std::string normal = p.lexically_normal().generic_string();
	if (normal.empty() || normal == "." || normal.back() == '/') bad("names a folder, not a file");
	return normal;
}

} // namespace

ShardIndex parse_shard_index(std::string_view json_text, const std::string& label) {
	const std::string where = escape_for_message(label, kMaxLabelBytes);
	const json j = parse_json_strict(json_text, where, "shard index");
	if (!j.is_object()) fail(where, fmt::format("shard index is {}, not an object", json_type_phrase(j)));
	auto map = j.find("weight_map");
	if (map == j.end()) fail(where, "missing 'weight_map'");
	if (!map->is_object()) fail(where, fmt::format("'weight_map' is {}, not an object", json_type_phrase(*map)));
	ShardIndex out;
	std::unordered_set<std::string> seen;
	for (const auto& [tensor, shard] : map->items()) {
		if (!shard.is_string())
			fail(where, fmt::format("weight_map entry {} is {}, not a string", quote_for_message(tensor),
			                        json_type_phrase(shard)));
		std::string file = check_shard_name(shard.get<std::string>(), tensor, where);
		if (seen.insert(file).second) out.shard_files.push_back(file);
		out.weight_map.emplace_back(tensor, std::move(file));
	}
	return out;
}

// --- writing ---

namespace {

std::string shard_file_name(size_t k, size_t n) {
	return n == 1 ? "model.safetensors" : fmt::format("model-{:05}-of-{:05}.safetensors", k + 1, n);
}

// Fills layout.shards[].tensors greedily and shard_of; headers come later.
void assign_shards(const std::vector<OutputTensorSpec>& tensors, uint64_t max_shard_bytes, OutputLayout& layout) {
	uint64_t current = 0;
	layout.shards.emplace_back();
	for (size_t i = 0; i < tensors.size(); ++i) {
		const uint64_t bytes = tensors[i].nbytes();
		auto total = checked_add(layout.total_size, bytes);
		if (!total) throw Error("output tensors total more than 2^64 bytes");
		layout.total_size = *total; // bounds every per-shard sum below
		auto grown = checked_add(current, bytes);
		if (!layout.shards.back().tensors.empty() && *grown > max_shard_bytes) {
			layout.shards.emplace_back();
			current = 0;
			grown = bytes;
		}
		current = *grown;
		layout.shards.back().tensors.push_back(i);
		layout.shard_of.push_back(layout.shards.size() - 1);
	}
}

// The shard's header JSON and the data offsets of its tensors, relative to the data region.
std::string shard_header_json(const std::vector<OutputTensorSpec>& tensors, const OutputLayout::Shard& shard,
                              const SafetensorsMetadata& metadata, std::vector<uint64_t>& relative) {
	nlohmann::ordered_json j;
	j["__metadata__"] = {{"format", "pt"}};
	for (const auto& [key, value] : metadata)
		j["__metadata__"][key] = value;
	uint64_t offset = 0;
	for (size_t i : shard.tensors) {
		const auto& t = tensors[i];
		if (j.contains(t.name)) throw Error(fmt::format("output tensor {} is not unique", quote_for_message(t.name)));
		const uint64_t end = *checked_add(offset, t.nbytes()); // cannot overflow: bounded by total_size
		j[t.name] = {{"dtype", dtype_safetensors_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, end}}};
		relative[i] = offset;
		offset = end;
	}
	try {
		return j.dump();
	} catch (const nlohmann::json::exception& e) {
		throw Error(fmt::format("cannot write safetensors header: {}", json_error_text(e)));
	}
}

std::string length_prefixed(std::string json_text) {
	json_text.append((8 - json_text.size() % 8) % 8, ' '); // data region starts 8-byte aligned
	std::string out(8, '\0');
	uint64_t n = json_text.size();
	for (int i = 0; i < 8; ++i, n >>= 8)
		out[i] = static_cast<char>(n & 0xFF);
	return out + json_text;
}

void pwrite_all(int fd, const uint8_t* data, uint64_t size, uint64_t offset, const std::filesystem::path& path) {
	while (size > 0) {
		const size_t chunk = static_cast<size_t>(std::min<uint64_t>(size, 1u << 30));
		const ssize_t n = ::pwrite(fd, data, chunk, static_cast<off_t>(offset));
		if (n < 0 && errno == EINTR) continue;
		if (n <= 0)
			fail(escape_for_message(path.string(), kMaxLabelBytes),
			     fmt::format("write failed: {}", n < 0 ? std::strerror(errno) : "no progress"));
		data += n;
		size -= static_cast<uint64_t>(n);
		offset += static_cast<uint64_t>(n);
	}
}

} // namespace

OutputLayout plan_output_layout(const std::vector<OutputTensorSpec>& tensors, uint64_t max_shard_bytes,
                                const SafetensorsMetadata& metadata) {
	OutputLayout layout;
	assign_shards(tensors, max_shard_bytes, layout);
	std::unordered_set<std::string_view> names;
	for (const auto& t : tensors)
		if (t.name == "__metadata__" || !names.insert(t.name).second)
			throw Error(fmt::format("output tensor name {} is reserved or not unique", quote_for_message(t.name)));
	std::vector<uint64_t> relative(tensors.size());
	layout.file_offset.resize(tensors.size());
	for (size_t k = 0; k < layout.shards.size(); ++k) {
		auto& shard = layout.shards[k];
		shard.file_name = shard_file_name(k, layout.shards.size());
		shard.header = length_prefixed(shard_header_json(tensors, shard, metadata, relative));
		std::optional<uint64_t> size = shard.header.size();
		for (size_t i : shard.tensors) {
			layout.file_offset[i] = shard.header.size() + relative[i]; // <= size, checked below
			size = size ? checked_add(*size, tensors[i].nbytes()) : std::nullopt;
		}
		if (!size || *size > static_cast<uint64_t>(INT64_MAX))
			throw Error(fmt::format("output shard {} would exceed the largest file size", shard.file_name));
		shard.file_size = *size;
	}
	return layout;
}

std::vector<unsigned> shard_ranks(const OutputLayout& layout, unsigned ranks) {
	if (ranks == 0) throw Error("cannot split an output among 0 ranks");
	// A shard goes to the rank whose equal share of the total holds the shard's middle byte. In
	// shard order, so each rank's shards are neighbours (and so, mostly, are the input files it
	// reads); each share is off by at most one shard. 128 bits: 2 * bytes * ranks can pass 2^64.
	__extension__ typedef unsigned __int128 u128;
	u128 total = 0, before = 0;
	for (const auto& shard : layout.shards)
		total += shard.file_size;
	std::vector<unsigned> owner;
	for (const auto& shard : layout.shards) {
		// Twice the middle byte's offset: the first byte plus the last.
		const u128 middle2 = 2 * before + std::max<uint64_t>(shard.file_size, 1) - 1;
		const u128 rank = total == 0 ? 0 : middle2 * ranks / (2 * total);
		owner.push_back(static_cast<unsigned>(std::min<u128>(rank, ranks - 1)));
		before += shard.file_size;
	}
	return owner;
}

void write_shard_index(const std::filesystem::path& dir, const std::vector<OutputTensorSpec>& tensors,
                       const OutputLayout& layout) {
	const auto index_path = dir / "model.safetensors.index.json";
	if (layout.shards.size() == 1) {
		std::error_code ec;
		std::filesystem::remove(index_path, ec); // a stale index would hide the new single file
		return;
	}
	nlohmann::json index;
	index["metadata"]["total_size"] = layout.total_size;
	index["weight_map"] = nlohmann::json::object();
	for (size_t i = 0; i < tensors.size(); ++i)
		index["weight_map"][tensors[i].name] = layout.shards[layout.shard_of[i]].file_name;
	std::ofstream out(index_path, std::ios::binary | std::ios::trunc);
	out << index.dump(2) << '\n';
	out.close();
	if (!out) fail(escape_for_message(index_path.string(), kMaxLabelBytes), "cannot write the shard index");
}

SafetensorsWriter::SafetensorsWriter(std::filesystem::path dir, std::vector<OutputTensorSpec> tensors,
                                     uint64_t max_shard_bytes, WriterPart part, const SafetensorsMetadata& metadata,
                                     WriterResume resume)
    : dir_(std::move(dir)), specs_(std::move(tensors)), layout_(plan_output_layout(specs_, max_shard_bytes, metadata)),
      part_(part), written_(specs_.size(), 0), resume_(std::move(resume)) {
	if (part_.rank >= part_.ranks)
		fail(escape_for_message(dir_.string(), kMaxLabelBytes),
		     fmt::format("writer part {} of {} does not exist", part_.rank, part_.ranks));
	if (!resume_.done.empty() && resume_.done.size() != layout_.shards.size())
		fail(escape_for_message(dir_.string(), kMaxLabelBytes),
		     fmt::format("{} shards marked done, but the layout has {}", resume_.done.size(), layout_.shards.size()));
	resume_.done.resize(layout_.shards.size(), false);
	shard_rank_ = shard_ranks(layout_, part_.ranks);
	pending_.assign(layout_.shards.size(), 0);
	for (size_t i = 0; i < specs_.size(); ++i)
		pending_[layout_.shard_of[i]] += std::max<uint64_t>(specs_[i].nbytes(), 1);
	fds_.assign(layout_.shards.size(), -1);
	try {
		for (size_t k = 0; k < layout_.shards.size(); ++k) {
			if (shard_rank_[k] != part_.rank) continue; // another rank creates it
			if (resume_.done[k]) continue;              // complete already
			const auto& shard = layout_.shards[k];
			const auto path = dir_ / shard.file_name;
			const std::string where = escape_for_message(path.string(), kMaxLabelBytes);
			const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
			if (fd < 0) fail(where, fmt::format("cannot create: {}", std::strerror(errno)));
			fds_[k] = fd;
			pwrite_all(fd, reinterpret_cast<const uint8_t*>(shard.header.data()), shard.header.size(), 0, path);
			if (::ftruncate(fd, static_cast<off_t>(shard.file_size)) != 0)
				fail(where, fmt::format("cannot size to {} bytes: {}", shard.file_size, std::strerror(errno)));
		}
	} catch (...) {
		for (int fd : fds_)
			if (fd >= 0) ::close(fd);
		throw;
	}
}

bool SafetensorsWriter::owns(size_t tensor_index) const {
	if (tensor_index >= specs_.size()) return false;
	const size_t shard = layout_.shard_of[tensor_index];
	return shard_rank_[shard] == part_.rank && !resume_.done[shard];
}

bool SafetensorsWriter::is_complete(size_t i) const {
	// An empty tensor counts as written once write() marked it (count 1).
	const uint64_t expected = specs_[i].nbytes();
	return expected == 0 ? written_[i] == 1 : written_[i] == expected;
}

SafetensorsWriter::~SafetensorsWriter() {
	for (int fd : fds_)
		if (fd >= 0) ::close(fd); // only after a failure; finish() closes and checks
}

void SafetensorsWriter::write(size_t tensor_index, std::span<const uint8_t> bytes) {
	write_range(tensor_index, 0, bytes, true);
}

void SafetensorsWriter::write_range(size_t tensor_index, uint64_t offset, std::span<const uint8_t> bytes, bool whole) {
	const std::string where = escape_for_message(dir_.string(), kMaxLabelBytes);
	if (tensor_index >= specs_.size())
		fail(where, fmt::format("write of tensor #{}, but only {} are planned", tensor_index, specs_.size()));
	if (finished_) fail(where, "write after finish()");
	const auto& spec = specs_[tensor_index];
	if (!owns(tensor_index)) {
		const size_t shard = layout_.shard_of[tensor_index];
		if (resume_.done[shard])
			fail(where, fmt::format("tensor {} is in shard {}, which is complete already", quote_for_message(spec.name),
			                        layout_.shards[shard].file_name));
		fail(where,
		     fmt::format("tensor {} is in shard {}, which rank {} writes, not rank {}", quote_for_message(spec.name),
		                 layout_.shards[shard].file_name, shard_rank_[shard], part_.rank));
	}
	const uint64_t expected = spec.nbytes();
	if (whole ? bytes.size() != expected : offset > expected || bytes.size() > expected - offset)
		fail(where, fmt::format("tensor {}: got {} bytes at offset {}, but shape {} of {} needs {}",
		                        quote_for_message(spec.name), bytes.size(), offset, shape_string(spec.shape),
		                        dtype_safetensors_name(spec.dtype), expected));
	// Bytes written per tensor, counted atomically so concurrent writers need no lock; callers
	// never write the same range twice, so a count beyond the size means a double write.
	std::atomic_ref<uint64_t> count(written_[tensor_index]);
	const bool twice = count.fetch_add(bytes.size()) + bytes.size() > expected;
	if (twice) count.fetch_sub(bytes.size());
	if (twice || (whole && expected == 0 && count.exchange(1)))
		fail(where, fmt::format("tensor {} written twice", quote_for_message(spec.name)));
	const size_t shard = layout_.shard_of[tensor_index];
	try {
		pwrite_all(fds_[shard], bytes.data(), bytes.size(), layout_.file_offset[tensor_index] + offset,
		           dir_ / layout_.shards[shard].file_name);
	} catch (...) {
		count.fetch_sub(bytes.size());
		throw;
	}
	// The bytes are in the file: the thread that writes a shard's last ones completes it.
	const uint64_t units = whole && expected == 0 ? 1 : bytes.size();
	if (units > 0 && std::atomic_ref<uint64_t>(pending_[shard]).fetch_sub(units) == units) complete_shard(shard);
}

void SafetensorsWriter::complete_shard(size_t k) {
	if (!resume_.on_complete) return; // closed by finish()
	// Nothing else touches this shard's descriptor any more: all its bytes are written.
	resume_.on_complete(k, std::exchange(fds_[k], -1));
}

void SafetensorsWriter::finish() {
	const std::string where = escape_for_message(dir_.string(), kMaxLabelBytes);
	if (finished_) fail(where, "finish() called twice");
	size_t missing = 0, owned = 0, first = specs_.size();
	for (size_t i = specs_.size(); i-- > 0;) {
		if (!owns(i)) continue;
		owned++;
		if (!is_complete(i)) {
			missing++;
			first = i;
		}
	}
	if (missing > 0) {
		fail(where, fmt::format("{} of {} tensors were never written (first: {})", missing, owned,
		                        quote_for_message(specs_[first].name)));
	}
	std::string close_error;
	for (size_t k = 0; k < fds_.size(); ++k) {
		if (fds_[k] < 0) continue;
		if (::close(fds_[k]) != 0 && close_error.empty())
			close_error = fmt::format("{}: {}", layout_.shards[k].file_name, std::strerror(errno));
		fds_[k] = -1;
	}
	finished_ = true;
	if (!close_error.empty()) fail(where, "closing shard failed: " + close_error);
	if (part_.ranks == 1) write_shard_index(dir_, specs_, layout_);
}

} // namespace weld
