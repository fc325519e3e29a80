// Llama-family models as GGUF files: a TensorSink that writes a merge's (or a folder's) tensors
// into one GGUF file, and the conversions between Hugging Face folders and GGUF files. GGUF
// files are written under a temporary name and renamed into place only when complete.
#pragma once

#include "io/gguf.h"
#include "io/gguf_llama.h"
#include "io/safetensors.h"
#include "io/tensor_sink.h"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace weld {

// The GGUF type a model's weights get by default: the type of `dtype` (f32, f16, bf16), else f16.
GgmlType default_gguf_type(DType dtype);
// "f32", "f16", "bf16", "q8_0"; throws weld::Error naming `option` for anything else.
GgmlType parse_gguf_type(const std::string& name, const std::string& option);

// Writes Hugging Face tensors (names, shapes and element types as in `tensors`) into a GGUF file:
// renamed, q/k rows permuted, converted to `type` (norms and other 1-D tensors stay f32, as
// llama.cpp's converter keeps them; q8_0 rows not a multiple of 32 fall back to f16). The
// metadata comes from dir's config.json and tokenizer files.
class GgufModelWriter : public TensorSink {
public:
	// label names the output in errors (path may be a temporary name).
	GgufModelWriter(const std::filesystem::path& path, const std::vector<OutputTensorSpec>& tensors,
	                const std::filesystem::path& dir, GgmlType type, const std::string& name, const std::string& label);
	~GgufModelWriter() override;

	bool owns(size_t) const override { return true; }
	void write(size_t tensor_index, std::span<const uint8_t> bytes) override;
	void write_range(size_t tensor_index, uint64_t byte_offset, std::span<const uint8_t> bytes,
	                 bool whole = false) override;
	void finish() override;

private:
	struct Target {
		bool dropped = false; // not in GGUF (rotary inv_freq)
		size_t index = 0;     // into the GGUF file's tensors
		DType in_dtype = DType::F32;
		GgmlType type = GgmlType::F32;
		uint64_t rows = 1, cols = 0;
		QkPermutation permutation;
	};
	std::string label_;
	std::vector<Target> targets_;
	std::unique_ptr<GgufWriter> writer_;
};

// Checks `out` can take a GGUF file: absent, or a file (not a folder) and force. Throws weld::Error.
void check_gguf_output(const std::filesystem::path& out, bool force);
// Moves a complete file to `out` (replacing a file there: the caller checked force).
void publish_file(const std::filesystem::path& from, const std::filesystem::path& out);

// weld convert: a Hugging Face folder → OUT.gguf, all or nothing. type: default_gguf_type of the
// model's matrices when nullopt.
void convert_folder_to_gguf(const std::filesystem::path& model, const std::filesystem::path& out,
                            std::optional<GgmlType> type, bool force);
// weld convert: a GGUF file → a Hugging Face folder (safetensors, config.json, tokenizer files
// where GGUF holds enough to rebuild them), all or nothing.
void convert_gguf_to_folder(const std::filesystem::path& gguf, const std::filesystem::path& out, bool force);
// The same into an existing empty folder: f32, f16 and bf16 tensors keep their type, q8_0
// becomes float32; names and q/k rows as Hugging Face has them.
void write_hf_folder_from_gguf(const std::filesystem::path& gguf, const std::filesystem::path& dir);

// Whether a recipe's model reference is a GGUF file (an existing file named *.gguf).
bool is_gguf_reference(const std::string& reference);

// A GGUF model written out as a Hugging Face folder under scratch_root (the system's temporary
// folder when empty), so that a merge reads it like any folder; removed with this object.
class GgufConvertedModel {
public:
	GgufConvertedModel(const std::filesystem::path& gguf, const std::filesystem::path& scratch_root);
	~GgufConvertedModel();
	GgufConvertedModel(const GgufConvertedModel&) = delete;
	GgufConvertedModel& operator=(const GgufConvertedModel&) = delete;

	const std::filesystem::path& dir() const { return dir_; }

private:
	std::filesystem::path dir_;
};

} // namespace weld
