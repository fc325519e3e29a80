#include "io/gguf_model.h"

#include "io/model.h"
#include "io/output_folder.h"
#include "tensor/convert.h"
#include "tensor/gguf_convert.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <unistd.h>

namespace weld {
namespace fs = std::filesystem;
namespace {

// Elements converted at once where rows are contiguous in both layouts.
constexpr uint64_t kChunkElements = 1 << 20;

uint64_t block_elements(GgmlType type) {
	return ggml_type_traits(static_cast<uint32_t>(type))->block_elements;
}
uint64_t block_bytes(GgmlType type) {
	return ggml_type_traits(static_cast<uint32_t>(type))->block_bytes;
}

std::optional<DType> plain_dtype(GgmlType type) {
	switch (type) {
	case GgmlType::F32:
		return DType::F32;
	case GgmlType::F16:
		return DType::F16;
	case GgmlType::BF16:
		return DType::BF16;
	case GgmlType::Q8_0:
		return std::nullopt;
	}
	return std::nullopt;
}

} // namespace

GgmlType default_gguf_type(DType dtype) {
	switch (dtype) {
	case DType::F32:
		return GgmlType::F32;
	case DType::BF16:
		return GgmlType::BF16;
	default:
		return GgmlType::F16;
	}
}

GgmlType parse_gguf_type(const std::string& name, const std::string& option) {
	if (auto type = ggml_type_from_name(name)) return *type;
	throw Error(fmt::format("{}: '{}' is not a GGUF type weld writes (f32, f16, bf16, q8_0)", option,
	                        escape_for_message(name)));
}

// --- GgufModelWriter ---

GgufModelWriter::GgufModelWriter(const fs::path& path, const std::vector<OutputTensorSpec>& tensors,
                                 const fs::path& dir, GgmlType type, const std::string& name, const std::string& label)
    : label_(label) {
	if (!fs::exists(dir / "config.json"))
		throw Error(fmt::format("{}: GGUF needs the model's config.json, and there is none", label_));
	const auto config = llama_config_from_json(read_text_file(dir / "config.json"), label_);
	if (!fs::exists(dir / "tokenizer.json"))
		throw Error(fmt::format(
		    "{}: GGUF holds the vocabulary, so weld needs the model's tokenizer.json, and there is none", label_));
	std::vector<GgufTensorSpec> specs;
	uint64_t vocab_rows = 0;
	for (const auto& t : tensors) {
		Target target;
		target.in_dtype = t.dtype;
		const auto gguf_name = gguf_tensor_name(t.name, label_);
		if (!gguf_name) {
			target.dropped = true;
			targets_.push_back(target);
			continue;
		}
		if (t.shape.empty() || t.shape.size() > 2 || !dtype_is_arithmetic(t.dtype))
			throw Error(fmt::format("{}: tensor {} ({} dimensions, {}) cannot be written as GGUF", label_,
			                        quote_for_message(t.name), t.shape.size(), dtype_safetensors_name(t.dtype)));
		target.cols = t.shape.back();
		target.rows = t.shape.size() == 2 ? t.shape[0] : 1;
		const bool vector = t.shape.size() == 1 || gguf_name->ends_with("_norm.weight");
		target.type = vector ? GgmlType::F32 : type;
		if (target.cols % block_elements(target.type) != 0) target.type = GgmlType::F16; // as llama.cpp's converter
		target.permutation = qk_permutation(t.name, config, target.rows == 1 ? target.cols : target.rows);
		if (t.name == "model.embed_tokens.weight") vocab_rows = target.rows;
		target.index = specs.size();
		specs.push_back({*gguf_name, target.type, {target.cols}});
		if (t.shape.size() == 2) specs.back().dims.push_back(target.rows);
		targets_.push_back(target);
	}
	if (vocab_rows == 0) throw Error(fmt::format("{}: no model.embed_tokens.weight", label_));
	const auto metadata = llama_gguf_metadata(config, dir, name, type, vocab_rows);
	writer_ = std::make_unique<GgufWriter>(path, metadata, std::move(specs));
}

GgufModelWriter::~GgufModelWriter() = default;

void GgufModelWriter::write(size_t tensor_index, std::span<const uint8_t> bytes) {
	write_range(tensor_index, 0, bytes, true);
}

// Converts element range [first, first + count) of the tensor, segment by segment: a segment
// stays inside one row where rows move (q/k), else it spans rows up to kChunkElements.
void GgufModelWriter::write_range(size_t tensor_index, uint64_t byte_offset, std::span<const uint8_t> bytes, bool) {
	const Target& t = targets_[tensor_index];
	if (t.dropped) return;
	const size_t in_size = dtype_size(t.in_dtype);
	const uint64_t first = byte_offset / in_size, end = first + bytes.size() / in_size;
	const uint64_t block = block_elements(t.type);
	std::vector<float> values;
	std::vector<uint8_t> staged;
	for (uint64_t e = first; e < end;) {
		// 1-D tensors permute single elements (q/k biases): a row of one.
		const uint64_t cols = t.rows == 1 && t.permutation.heads ? 1 : t.cols;
		const uint64_t row = e / cols, col = e % cols;
		const uint64_t stop = t.permutation.heads ? std::min(end, (row + 1) * cols) : std::min(end, e + kChunkElements);
		const uint64_t n = stop - e;
		if (col % block != 0 || (n % block != 0 && stop % t.cols != 0))
			throw Error(fmt::format("{}: tensor {}: a write of part of a {}-value block", label_, tensor_index, block));
		values.resize(n);
		convert_to_f32(t.in_dtype, bytes.data() + (e - first) * in_size, values.data(), n);
		staged.resize((n + block - 1) / block * block_bytes(t.type));
		ggml_from_f32(t.type, values.data(), staged.data(), n);
		const uint64_t at = t.permutation.to_gguf(row) * cols + col; // element index in GGUF's layout
		writer_->write(t.index, at / block * block_bytes(t.type), staged);
		e = stop;
	}
}

void GgufModelWriter::finish() {
	writer_->finish();
}

// --- publishing a file ---

void check_gguf_output(const fs::path& out, bool force) {
	if (fs::is_directory(out)) throw Error(fmt::format("{}: is a folder; GGUF output is a single file", out.string()));
	if (fs::exists(out) && !force)
		throw Error(fmt::format("{}: output already exists (use --force to replace it)", out.string()));
}

void publish_file(const fs::path& from, const fs::path& out) {
	std::error_code ec;
	fs::rename(from, out, ec);
	if (ec) throw Error(fmt::format("{}: cannot move the output into place: {}", out.string(), ec.message()));
}

// --- Hugging Face → GGUF ---

void convert_folder_to_gguf(const fs::path& model_dir, const fs::path& out, std::optional<GgmlType> type, bool force) {
	check_gguf_output(out, force);
	const ModelFolder model(model_dir);
	std::vector<OutputTensorSpec> specs;
	std::map<DType, uint64_t> matrix_bytes; // the type most of the weights have
	for (const auto& t : model.tensors()) {
		specs.push_back({t.info->name, t.info->dtype, t.info->shape});
		if (t.info->shape.size() == 2) matrix_bytes[t.info->dtype] += t.info->nbytes();
	}
	if (!type) {
		auto most = std::max_element(matrix_bytes.begin(), matrix_bytes.end(),
		                             [](const auto& a, const auto& b) { return a.second < b.second; });
		type = default_gguf_type(most == matrix_bytes.end() ? DType::F16 : most->first);
	}
	OutputFolder folder(out, force); // a temporary folder beside out, gone when this returns
	const auto file = folder.path() / "model.gguf";
	GgufModelWriter writer(file, specs, model_dir, *type, fs::path(out).stem().string(), out.string());
	for (size_t i = 0; i < model.tensors().size(); i++) {
		const auto& t = model.tensors()[i];
		writer.write(i, t.file->data(*t.info));
		t.file->release(*t.info);
	}
	writer.finish();
	publish_file(file, out);
}

// --- GGUF → Hugging Face ---

namespace {

struct SourceTensor {
	const GgufTensorInfo* info;
	GgmlType type;
	QkPermutation permutation;
	uint64_t rows, cols;
};

// Rows [row, row + count) of the GGUF tensor as Hugging Face's rows (in the output dtype).
void write_hf_tensor(const GgufFile& file, const SourceTensor& s, size_t index, DType dtype,
                     SafetensorsWriter& writer) {
	const auto data = file.data(*s.info);
	if (plain_dtype(s.type) == dtype && s.permutation.heads == 0) {
		writer.write(index, data);
		return;
	}
	const uint64_t row_bytes = s.cols / block_elements(s.type) * block_bytes(s.type);
	const uint64_t rows_at_once = s.permutation.heads ? 1 : std::max<uint64_t>(1, kChunkElements / s.cols);
	// 1-D permuted tensors (q/k biases) move single elements.
	const bool elementwise = s.rows == 1 && s.permutation.heads;
	std::vector<float> values;
	std::vector<uint8_t> out;
	if (elementwise) {
		values.resize(s.cols);
		std::vector<float> moved(s.cols);
		ggml_to_f32(s.type, data.data(), values.data(), s.cols);
		for (uint64_t g = 0; g < s.cols; g++)
			moved[s.permutation.to_hf(g)] = values[g];
		out.resize(s.cols * dtype_size(dtype));
		convert_from_f32(dtype, moved.data(), out.data(), s.cols);
		writer.write(index, out);
		return;
	}
	for (uint64_t g = 0; g < s.rows; g += rows_at_once) {
		const uint64_t count = std::min(rows_at_once, s.rows - g), n = count * s.cols;
		values.resize(n);
		out.resize(n * dtype_size(dtype));
		ggml_to_f32(s.type, data.data() + g * row_bytes, values.data(), n);
		convert_from_f32(dtype, values.data(), out.data(), n);
		const uint64_t hf_row = s.permutation.to_hf(g);
		writer.write_range(index, hf_row * s.cols * dtype_size(dtype), out);
	}
}

} // namespace

void write_hf_folder_from_gguf(const fs::path& gguf, const fs::path& dir) {
	const GgufFile file(gguf);
	const std::string label = gguf.string();
	for (const auto& info : file.header().tensors) // the types first: a quantized file is refused as that
		if (info.type != 0 && info.type != 1 && info.type != 8 && info.type != 30)
			throw Error(fmt::format("{}: tensor {} is {}; weld reads f32, f16, bf16 and q8_0 tensors", label,
			                        quote_for_message(info.name), ggml_type_name(info.type)));
	const auto config = llama_config_from_gguf(file.header(), label);
	std::vector<SourceTensor> sources;
	std::vector<OutputTensorSpec> specs;
	std::map<DType, uint64_t> matrix_bytes;
	uint64_t vocab_rows = 0;
	bool tied = true;
	for (const auto& info : file.header().tensors) {
		const auto name = hf_tensor_name(info.name, label);
		const auto type = static_cast<GgmlType>(info.type);
		if (info.dims.size() > 2)
			throw Error(
			    fmt::format("{}: tensor {} has {} dimensions", label, quote_for_message(info.name), info.dims.size()));
		SourceTensor s{&info, type, {}, info.dims.size() == 2 ? info.dims[1] : 1, info.dims[0]};
		s.permutation = qk_permutation(name, config, s.rows == 1 ? s.cols : s.rows);
		const DType dtype = plain_dtype(type).value_or(DType::F32);
		std::vector<uint64_t> shape{s.cols};
		if (info.dims.size() == 2) {
			shape.insert(shape.begin(), s.rows);
			matrix_bytes[dtype] += s.rows * s.cols;
		}
		if (info.name == "token_embd.weight") vocab_rows = s.rows;
		if (info.name == "output.weight") tied = false;
		sources.push_back(s);
		specs.push_back({name, dtype, shape});
	}
	if (vocab_rows == 0) throw Error(fmt::format("{}: no token_embd.weight tensor", label));
	SafetensorsWriter writer(dir, specs, 5'000'000'000);
	for (size_t i = 0; i < sources.size(); i++) {
		write_hf_tensor(file, sources[i], i, specs[i].dtype, writer);
		file.release(*sources[i].info);
	}
	writer.finish();
	auto most = std::max_element(matrix_bytes.begin(), matrix_bytes.end(),
	                             [](const auto& a, const auto& b) { return a.second < b.second; });
	const DType dtype = most == matrix_bytes.end() ? DType::F32 : most->first;
	write_text_file(dir / "config.json", hf_config_json(config, file.header(), dtype, tied, vocab_rows));
	write_hf_tokenizer(file.header(), dir);
}

void convert_gguf_to_folder(const fs::path& gguf, const fs::path& out, bool force) {
	write_folder_atomically(out, force, [&](const fs::path& dir) { write_hf_folder_from_gguf(gguf, dir); });
}

bool is_gguf_reference(const std::string& reference) {
	std::error_code ec;
	return reference.ends_with(".gguf") && fs::is_regular_file(reference, ec);
}

GgufConvertedModel::GgufConvertedModel(const fs::path& gguf, const fs::path& scratch_root) {
	static std::atomic<int> counter{0};
	const fs::path root = scratch_root.empty() ? fs::temp_directory_path() : scratch_root;
	dir_ = fs::absolute(root) / fmt::format(".weld-gguf-{}-{}", getpid(), counter++);
	std::error_code ec;
	fs::remove_all(dir_, ec);
	if (!fs::create_directory(dir_, ec))
		throw Error(fmt::format("{}: cannot create the folder to read {} into: {}", dir_.string(), gguf.string(),
		                        ec.message()));
	try {
		write_hf_folder_from_gguf(gguf, dir_);
	} catch (...) {
		fs::remove_all(dir_, ec);
		throw;
	}
}

GgufConvertedModel::~GgufConvertedModel() {
	std::error_code ignored;
	fs::remove_all(dir_, ignored);
}

} // namespace weld
