// Hugging Face tokenizer files as a merge needs them: the vocabulary of tokenizer.json (BPE,
// WordPiece, WordLevel or Unigram model plus added_tokens), tokenizer_config.json (special
// tokens, added_tokens_decoder, chat_template) and special_tokens_map.json; and writing them
// back with tokens appended, tokens beyond the embedding rows removed, or a new chat template.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace weld {

// An entry of tokenizer.json's added_tokens, with the flags the tokenizers library keeps.
struct AddedToken {
	int64_t id = 0;
	std::string content;
	bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

struct TokenizerFiles {
	std::filesystem::path dir;
	nlohmann::json tokenizer; // tokenizer.json (keys sorted: an ordered object is quadratic to build)
	std::optional<nlohmann::ordered_json> config;   // tokenizer_config.json, where present
	std::vector<AddedToken> added;                  // added_tokens, in file order
	std::unordered_map<std::string, int64_t> vocab; // token -> id, added tokens included
	std::unordered_map<std::string, bool> is_added; // tokens of `added`
	std::optional<std::string> chat_template;       // chat_template.jinja, else the config's

	// One more than the largest id (0 for an empty vocabulary).
	int64_t id_span() const;
	// Tokens by id; ids no token has are "".
	std::vector<std::string> tokens_by_id() const;
};

// Whether dir holds a tokenizer.json.
bool has_tokenizer_json(const std::filesystem::path& dir);

// Reads dir's tokenizer.json (required), tokenizer_config.json and chat_template.jinja (where
// present). Throws weld::Error naming the file and what is wrong with it.
TokenizerFiles read_tokenizer_files(const std::filesystem::path& dir);

// dir's tokenizer_config.json, nullopt when absent. Throws weld::Error naming the file when it
// cannot be parsed.
std::optional<nlohmann::ordered_json> read_tokenizer_config(const std::filesystem::path& dir);

// The chat template of a model folder: chat_template.jinja, else tokenizer_config.json's
// chat_template (a string, or the one named "default" of a list); nullopt when none.
std::optional<std::string> read_chat_template(const std::filesystem::path& dir);

// Drops every token whose id is max_id or more (from the model's vocab, added_tokens and
// added_tokens_decoder, and BPE merges that use one): they have no embedding row.
void strip_tokens_from(TokenizerFiles& files, int64_t max_id);

// What a merge writes: the donor's files, with `appended` added tokens and, where set, a chat
// template (which replaces any chat_template.jinja).
struct TokenizerOutput {
	std::filesystem::path donor_dir;
	std::optional<TokenizerFiles> files; // nullopt: the donor's files are copied unchanged
	std::vector<AddedToken> appended;
	std::optional<std::string> chat_template;
};

// Writes the tokenizer files into out_dir; the donor's other tokenizer files are copied as they are.
void write_tokenizer_output(const TokenizerOutput& output, const std::filesystem::path& out_dir);

} // namespace weld
