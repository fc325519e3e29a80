// The Llama family in GGUF as llama.cpp reads it (convert_hf_to_gguf.py's LlamaModel and
// Qwen2Model): tensor names, the q/k row order, the metadata keys, and the tokenizer; and the way
// back to a Hugging Face config.json and tokenizer files.
#pragma once

#include "io/dtype.h"
#include "io/gguf.h"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace weld {

using GgufMetadata = std::vector<std::pair<std::string, GgufValue>>;

// The shape of a Llama-family model, from config.json or from GGUF metadata.
struct GgufLlamaConfig {
	std::string arch; // GGUF's name: "llama" (Llama, Mistral) or "qwen2"
	std::string hf_architecture;
	int64_t layers = 0, hidden = 0, intermediate = 0, heads = 0, kv_heads = 0, head_dim = 0;
	int64_t context_length = 0;
	double rope_theta = 10000, rms_eps = 1e-6;
	bool permute_qk() const { return arch == "llama"; }
};
// Throws weld::Error naming `label` for an architecture GGUF output does not support, rope
// scaling, or a missing key.
GgufLlamaConfig llama_config_from_json(const std::string& config_json, const std::string& label);

// GGUF's name of a Hugging Face tensor ("model.layers.3.self_attn.q_proj.weight" →
// "blk.3.attn_q.weight"); nullopt for tensors GGUF leaves out (rotary inv_freq). Throws
// weld::Error for a tensor with no GGUF name.
std::optional<std::string> gguf_tensor_name(const std::string& hf_name, const std::string& label);
// The inverse; throws weld::Error for a GGUF tensor weld does not know.
std::string hf_tensor_name(const std::string& gguf_name, const std::string& label);

// llama.cpp's rotary embedding pairs neighbouring rows of q and k, Hugging Face's rotate-half
// pairs row i with row i + head_dim/2: convert_hf_to_gguf.py permutes each head's rows
// (LlamaModel.permute). heads == 0: no permutation (other tensors, or Qwen2).
struct QkPermutation {
	uint64_t heads = 0, rows = 0;
	// The GGUF row of Hugging Face row r, and back.
	uint64_t to_gguf(uint64_t r) const;
	uint64_t to_hf(uint64_t r) const;
};
// The permutation of an HF tensor (q_proj/k_proj weight or bias) of `rows` rows.
QkPermutation qk_permutation(const std::string& hf_name, const GgufLlamaConfig& config, uint64_t rows);

// Everything but the tensors: architecture and shape keys, file type, and the tokenizer read
// from dir's tokenizer.json, tokenizer_config.json and chat template, padded to vocab_rows tokens.
GgufMetadata llama_gguf_metadata(const GgufLlamaConfig& config, const std::filesystem::path& dir,
                                 const std::string& name, GgmlType file_type, uint64_t vocab_rows);

// The way back: a config.json for the GGUF file's metadata (Llama, Mistral as Llama, Qwen2).
GgufLlamaConfig llama_config_from_gguf(const GgufHeader& header, const std::string& label);
std::string hf_config_json(const GgufLlamaConfig& config, const GgufHeader& header, DType dtype, bool tied,
                           uint64_t vocab_rows);
// tokenizer_config.json (special tokens, chat template) and, for a byte-level BPE vocabulary
// ("gpt2"), tokenizer.json; SentencePiece-style ("llama") vocabularies have no merges in GGUF,
// so they get no tokenizer.json. Returns the names of the files written.
std::vector<std::string> write_hf_tokenizer(const GgufHeader& header, const std::filesystem::path& dir);

} // namespace weld
