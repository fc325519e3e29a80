#include "text/unicode.h"

namespace weld::text {

namespace {

// The valid range of the byte after a lead byte (RFC 3629's table), and how many continuation
// bytes the lead byte announces; 0 for a byte that cannot start a sequence.
struct Lead {
	int continuation;
	uint8_t low, high; // of the first continuation byte
};

Lead lead_of(uint8_t b) {
	if (b >= 0xC2 && b <= 0xDF) return {1, 0x80, 0xBF};
	if (b == 0xE0) return {2, 0xA0, 0xBF};
	if (b == 0xED) return {2, 0x80, 0x9F};
	if (b >= 0xE1 && b <= 0xEF) return {2, 0x80, 0xBF};
	if (b == 0xF0) return {3, 0x90, 0xBF};
	if (b >= 0xF1 && b <= 0xF3) return {3, 0x80, 0xBF};
	if (b == 0xF4) return {3, 0x80, 0x8F};
	return {0, 0, 0};
}

// How many bytes from s[i] form a valid prefix of a sequence (at least 1), and whether the
// whole sequence is there.
std::pair<size_t, bool> scan(std::string_view s, size_t i) {
	const auto b = static_cast<uint8_t>(s[i]);
	if (b < 0x80) return {1, true};
	const Lead lead = lead_of(b);
	if (lead.continuation == 0) return {1, false};
	for (int k = 1; k <= lead.continuation; ++k) {
		const size_t at = i + static_cast<size_t>(k);
		if (at >= s.size()) return {at - i, false};
		const auto c = static_cast<uint8_t>(s[at]);
		const uint8_t low = k == 1 ? lead.low : 0x80, high = k == 1 ? lead.high : 0xBF;
		if (c < low || c > high) return {at - i, false};
	}
	return {static_cast<size_t>(lead.continuation) + 1, true};
}

} // namespace

std::optional<CodePoint> next_code_point(std::string_view s, size_t i) {
	const auto [length, complete] = scan(s, i);
	if (!complete) return std::nullopt;
	const auto b = static_cast<uint8_t>(s[i]);
	if (length == 1) return CodePoint{b, 1};
	char32_t cp = b & (0x7F >> length);
	for (size_t k = 1; k < length; ++k)
		cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
	return CodePoint{cp, length};
}

bool valid_utf8(std::string_view s) {
	for (size_t i = 0; i < s.size();) {
		const auto [length, complete] = scan(s, i);
		if (!complete) return false;
		i += length;
	}
	return true;
}

void append_utf8(std::string& out, char32_t cp) {
	if (cp < 0x80) {
		out += static_cast<char>(cp);
	} else if (cp < 0x800) {
		out += static_cast<char>(0xC0 | (cp >> 6));
		out += static_cast<char>(0x80 | (cp & 0x3F));
	} else if (cp < 0x10000) {
		out += static_cast<char>(0xE0 | (cp >> 12));
		out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
		out += static_cast<char>(0x80 | (cp & 0x3F));
	} else {
		out += static_cast<char>(0xF0 | (cp >> 18));
		out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
		out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
		out += static_cast<char>(0x80 | (cp & 0x3F));
	}
}

std::string decode_utf8_lossy(std::string_view bytes) {
	std::string out;
	out.reserve(bytes.size());
	for (size_t i = 0; i < bytes.size();) {
		const auto [length, complete] = scan(bytes, i);
		if (complete)
			out.append(bytes.substr(i, length));
		else
			append_utf8(out, 0xFFFD);
		i += length;
	}
	return out;
}

bool is_js_whitespace(char32_t cp) {
	return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
	       cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000 || cp == 0xFEFF;
}

std::string_view trim_start(std::string_view s) {
	size_t i = 0;
	while (i < s.size()) {
		const auto cp = next_code_point(s, i);
		if (!cp || !is_js_whitespace(cp->value)) break;
		i += cp->length;
	}
	return s.substr(i);
}

std::string_view trim_end(std::string_view s) {
	size_t end = s.size();
	while (end > 0) {
		size_t start = end - 1;
		while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80)
			--start;
		const auto cp = next_code_point(s, start);
		if (!cp || start + cp->length != end || !is_js_whitespace(cp->value)) break;
		end = start;
	}
	return s.substr(0, end);
}

} // namespace weld::text
