// Helpers of the GGUF tests: a tiny Llama with a small byte-level BPE tokenizer.json of the kind
// llama.cpp accepts (GPT-2's 256 byte tokens, a few merges, Llama 3's pre-tokenizer regex, two
// special tokens), and a recipe runner.
#pragma once

#include "test_util.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace weld::test {

constexpr int kGgufVocab = 272; // 256 bytes, 8 merges, 6 unused ids, 2 special tokens
constexpr int kBosId = 270, kEosId = 271;

// GPT-2's bytes_to_unicode: the printable character standing for each byte, as UTF-8.
inline std::string byte_token(int byte) {
	auto printable = [](int b) {
		return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
	};
	int code = byte;
	if (!printable(byte)) {
		int n = 0;
		for (int b = 0; b < byte; b++)
			if (!printable(b)) n++;
		code = 256 + n;
	}
	std::string s;
	if (code < 0x80) {
		s += static_cast<char>(code);
	} else {
		s += static_cast<char>(0xC0 | (code >> 6));
		s += static_cast<char>(0x80 | (code & 0x3F));
	}
	return s;
}

inline void write_byte_level_tokenizer(const std::filesystem::path& dir) {
	nlohmann::ordered_json vocab;
	for (int b = 0; b < 256; b++)
		vocab[byte_token(b)] = b;
	const std::string space = byte_token(' ');
	const std::vector<std::pair<std::string, std::string>> merges = {
	    {space, "t"}, {"h", "e"}, {space + "t", "he"}, {"i", "n"}, {space, "a"}, {"e", "r"}, {"o", "n"}, {"a", "n"}};
	nlohmann::ordered_json merge_list = nlohmann::ordered_json::array();
	int id = 256;
	for (const auto& [a, b] : merges) {
		vocab[a + b] = id++;
		merge_list.push_back(a + " " + b);
	}
	const char* regex =
	    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
	nlohmann::ordered_json added = nlohmann::ordered_json::array();
	for (auto [token_id, content] : {std::pair{kBosId, "<|begin_of_text|>"}, std::pair{kEosId, "<|end_of_text|>"}})
		added.push_back({{"id", token_id},
		                 {"content", content},
		                 {"single_word", false},
		                 {"lstrip", false},
		                 {"rstrip", false},
		                 {"normalized", false},
		                 {"special", true}});
	const nlohmann::ordered_json byte_level = {
	    {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
	nlohmann::ordered_json t;
	t["version"] = "1.0";
	t["truncation"] = nullptr;
	t["padding"] = nullptr;
	t["added_tokens"] = added;
	t["normalizer"] = nullptr;
	t["pre_tokenizer"] = {
	    {"type", "Sequence"},
	    {"pretokenizers",
	     {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
	      byte_level}}};
	t["post_processor"] = byte_level;
	t["decoder"] = byte_level;
	t["model"] = {
	    {"type", "BPE"}, {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", vocab}, {"merges", merge_list}};
	write_file(dir / "tokenizer.json", t.dump(2));
	nlohmann::ordered_json config = {{"bos_token", "<|begin_of_text|>"},
	                                 {"eos_token", "<|end_of_text|>"},
	                                 {"add_bos_token", true},
	                                 {"chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}"}};
	write_file(dir / "tokenizer_config.json", config.dump(2));
}

// A tiny Llama (4 query heads, 2 KV heads, head size 8) with the tokenizer above, its weights
// scaled up so that attention and the logits vary enough for a comparison to mean something.
inline std::vector<NamedTensor> write_gguf_ready_model(const std::filesystem::path& dir, uint64_t seed = 11,
                                                       DType dtype = DType::F32) {
	TinyLlamaSpec spec{.layers = 2, .hidden = 32, .intermediate = 64, .vocab = kGgufVocab, .heads = 4, .kv_heads = 2};
	spec.dtype = dtype;
	auto tensors = make_tiny_llama(spec, seed);
	for (auto& t : tensors)
		if (t.shape.size() == 2)
			for (float& v : t.values)
				v *= 4.0f;
	write_tiny_llama(dir, spec, tensors);
	write_byte_level_tokenizer(dir);
	return tensors;
}

} // namespace weld::test
