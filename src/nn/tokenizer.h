// Model input without a tokenizer library: bytes as tokens for weld's own small models, and
// JSON-lines files of token ids or prompt/answer pairs for everything else.
#pragma once

#include <cstdint>
#include <filesystem>
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
