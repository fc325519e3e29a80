// A model folder's own tokenizer (tokenizer.json + tokenizer_config.json), encoding and decoding
// text as Hugging Face's tokenizers library does, for the two BPE families LLMs use:
//   - byte-level BPE (GPT-2, Llama-3, Qwen2): pre-tokenizer ByteLevel, or Sequence[Split(regex),
//     ByteLevel]; decoder ByteLevel; optional NFC normalizer.
//   - SentencePiece-style BPE (Llama-2, Mistral): normalizer Prepend("▁") + Replace(" ", "▁") or
//     the Metaspace pre-tokenizer; byte_fallback and fuse_unk; decoder Replace/ByteFallback/Fuse/Strip.
// Added tokens (special or not) are split out of the text first, with their lstrip, rstrip and
// normalized flags. BOS/EOS come from tokenizer_config.json's add_bos_token/add_eos_token where it
// has them, else from the post_processor's TemplateProcessing.
//
// Everything else (WordPiece, Unigram, WordLevel models; normalizers, pre-tokenizers, decoders
// and post-processors not listed above) is refused with an error naming the file and component.
// Plain C++ (PCRE2 for the pre-tokenizer regexes, ICU for Unicode normalization): no libtorch.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weld::text {

class Tokenizer {
public:
	// dir/tokenizer.json (required) and dir/tokenizer_config.json (optional); the chat template
	// from dir/chat_template.jinja or the config. Throws weld::Error naming the file and what is
	// wrong or unsupported.
	static Tokenizer load(const std::filesystem::path& dir);
	// From parsed files; `label` names tokenizer.json in errors.
	static Tokenizer from_json(const nlohmann::json& tokenizer, const nlohmann::json* config, const std::string& label);

	Tokenizer(Tokenizer&&) noexcept;
	Tokenizer& operator=(Tokenizer&&) noexcept;
	~Tokenizer();

	// UTF-8 text to ids; with add_special_tokens, BOS/EOS around it as the files say. Invalid
	// UTF-8 is an error.
	std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const;
	// Ids back to text (invalid UTF-8 bytes become U+FFFD); ids outside the vocabulary throw.
	std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;

	// One more than the largest id.
	int64_t id_span() const;
	std::optional<int64_t> token_to_id(std::string_view token) const;
	// The BOS/EOS ids and strings of tokenizer_config.json (else the post-processor's first
	// special token for BOS); nullopt / "" when there is none.
	std::optional<int64_t> bos_id() const;
	std::optional<int64_t> eos_id() const;
	const std::string& bos_token() const;
	const std::string& eos_token() const;
	// Whether id is a special added token (what skip_special_tokens drops).
	bool is_special(int64_t id) const;
	// chat_template.jinja, else tokenizer_config.json's chat_template; nullopt when none.
	const std::optional<std::string>& chat_template() const;

	struct Impl;

private:
	explicit Tokenizer(std::unique_ptr<Impl> impl);
	std::unique_ptr<Impl> impl_;
};

} // namespace weld::text
