// UTF-8 helpers shared by the tokenizer and the chat-template interpreter.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace weld::text {

// The code point starting at s[i] and its length in bytes; nullopt when s[i..] is not valid UTF-8
// (overlong forms, surrogates and code points past U+10FFFF included).
struct CodePoint {
	char32_t value;
	size_t length;
};
std::optional<CodePoint> next_code_point(std::string_view s, size_t i);

// Whether s is valid UTF-8.
bool valid_utf8(std::string_view s);

void append_utf8(std::string& out, char32_t cp);

// Bytes as text, each maximal invalid subsequence replaced by U+FFFD (what a browser's
// TextDecoder and Rust's from_utf8_lossy do).
std::string decode_utf8_lossy(std::string_view bytes);

// JavaScript's String.prototype.trim whitespace: ASCII whitespace, U+00A0, U+1680,
// U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000 and U+FEFF.
bool is_js_whitespace(char32_t cp);
std::string_view trim_start(std::string_view s);
std::string_view trim_end(std::string_view s);

} // namespace weld::text
