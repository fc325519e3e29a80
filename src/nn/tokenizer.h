// Model input: the folder's own tokenizer.json (src/text/tokenizer.h) where it has one, bytes as
// tokens for weld's own small models, and JSON-lines files of token ids or prompt/answer pairs.
#pragma once

#include "text/tokenizer.h"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weld::nn {

// Byte-level tokenizer: token ids 0-255 are the bytes of UTF-8 text. Models with room in
// their vocabulary (vocab_size >= 258) also have BOS = 256, put before every sequence, and
// EOS = 257, which ends generation. vocab_size < 256 cannot hold text.
class ByteTokenizer {
public:
	static constexpr int64_t kBos = 256;
	static constexpr int64_t kEos = 257;

	// Throws weld::Error, naming `model` (the folder, for the message), when vocab_size < 256.
	ByteTokenizer(int64_t vocab_size, const std::string& model);

	bool has_specials() const { return specials_; }
	// The bytes of text, after BOS when the model has one.
	std::vector<int64_t> encode(std::string_view text) const;
	// Bytes back to text; BOS and EOS are dropped.
	std::string decode(const std::vector<int64_t>& ids) const;

private:
	bool specials_ = false;
};

// The tokenizer of a model folder for weld eval and weld train: its tokenizer.json where it has
// one, else bytes (ByteTokenizer). Cheap to copy.
class ModelTokenizer {
public:
	// Throws weld::Error naming the folder for a tokenizer file weld cannot run (tokenizer.model,
	// vocab.json, *.tiktoken without tokenizer.json; an unsupported tokenizer.json), a tokenizer
	// with ids beyond vocab_size, or a vocabulary too small for bytes. An empty model_dir: bytes.
	ModelTokenizer(const std::filesystem::path& model_dir, int64_t vocab_size);

	// Whether this is the folder's own tokenizer (else bytes).
	bool own() const { return own_ != nullptr; }
	// Text to ids with the special tokens the files ask for (BOS for bytes with room for it).
	std::vector<int64_t> encode(std::string_view text) const;
	// Without special tokens (what follows a prompt: an answer).
	std::vector<int64_t> encode_plain(std::string_view text) const;
	// Ids back to text, special tokens dropped.
	std::string decode(const std::vector<int64_t>& ids) const;
	// Whether generation ends at this id (EOS).
	bool is_eos(int64_t id) const;
	// A line of text as sequences of at most max_positions tokens (0: no limit): bytes are cut
	// into pieces each encoded on its own (BOS before each); a real tokenizer's ids are cut.
	std::vector<std::vector<int64_t>> encode_line(std::string_view line, int64_t max_positions) const;
	// A prompt's ids; with chat, the prompt is one user message rendered through the model's chat
	// template with add_generation_prompt (tokenized without adding special tokens, as
	// transformers' apply_chat_template does). Throws when the folder has no chat template.
	std::vector<int64_t> encode_prompt(const std::string& prompt, bool chat) const;

private:
	std::string model_; // for messages
	std::optional<ByteTokenizer> bytes_;
	std::shared_ptr<const text::Tokenizer> own_;
	std::optional<std::string> chat_template_; // its text
};

// Files of a model folder that mean it has a tokenizer of its own (tokenizer.json,
// tokenizer.model, vocab.json, *.tiktoken); the first one found, or "" when there is none.
std::string own_tokenizer_file(const std::filesystem::path& model_dir);

// What a data file holds: `.jsonl` files by the keys of their first record, else plain text.
enum class DataKind { Text, TokenIds, PromptAnswer };
DataKind detect_data_kind(const std::filesystem::path& file);

// {"input_ids": [1, 2, 3]} per line (blank lines skipped), each id below vocab_size. Errors
// name file:line.
std::vector<std::vector<int64_t>> read_token_id_lines(const std::filesystem::path& file, int64_t vocab_size);

struct PromptAnswer {
	std::string prompt;
	std::string answer;
};
// {"prompt": "...", "answer": "..."} per line (blank lines skipped). Errors name file:line.
std::vector<PromptAnswer> read_prompt_answer_lines(const std::filesystem::path& file);

// The text of a file, one entry per line (without the newline), empty lines skipped.
std::vector<std::string> read_text_lines(const std::filesystem::path& file);

} // namespace weld::nn
