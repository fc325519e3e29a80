#include "text/tokenizer.h"

#include "io/output_folder.h"
#include "io/safetensors.h"
#include "io/tokenizer_files.h"
#include "text/unicode.h"
#include "util/error.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include <algorithm>
#include <array>
#include <map>
#include <queue>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <variant>

namespace weld::text {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// --- patterns: a literal string or a PCRE2 regex in UTF + Unicode-property mode ---

class Regex {
public:
	Regex(const std::string& pattern, const std::string& where) {
		int code = 0;
		PCRE2_SIZE offset = 0;
		auto* re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
		                         &code, &offset, nullptr);
		if (!re) {
			std::array<PCRE2_UCHAR, 256> message{};
			pcre2_get_error_message(code, message.data(), message.size());
			throw Error(fmt::format("{}: regex {} does not compile at offset {}: {}", where, quote_for_message(pattern),
			                        offset, reinterpret_cast<const char*>(message.data())));
		}
		pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); // where JIT is unavailable, matching is interpreted
		code_.reset(re, pcre2_code_free);
	}

	// [begin, end) byte ranges of the successive non-overlapping matches in valid UTF-8 text.
	std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const {
		std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> data(
		    pcre2_match_data_create_from_pattern(code_.get(), nullptr), pcre2_match_data_free);
		std::vector<std::pair<size_t, size_t>> out;
		size_t at = 0;
		while (at <= text.size()) {
			const int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), at,
			                           PCRE2_NO_UTF_CHECK, data.get(), nullptr);
			if (rc == PCRE2_ERROR_NOMATCH) break;
			if (rc < 0) throw Error(fmt::format("regex matching failed (PCRE2 error {})", rc));
			const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.get());
			out.emplace_back(ov[0], ov[1]);
			if (ov[1] > ov[0]) {
				at = ov[1];
			} else { // an empty match: go on after the next character
				if (ov[1] >= text.size()) break;
				at = ov[1] + next_code_point(text, ov[1])->length;
			}
		}
		return out;
	}

private:
	std::shared_ptr<pcre2_code> code_;
};

class Pattern {
public:
	// {"String": "..."} or {"Regex": "..."}.
	Pattern(const json& j, const std::string& where) {
		if (j.is_object() && j.contains("String") && j["String"].is_string()) {
			literal_ = j["String"].get<std::string>();
			if (literal_.empty()) throw Error(fmt::format("{}: an empty pattern", where));
		} else if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
			regex_.emplace(j["Regex"].get<std::string>(), where);
		} else {
			throw Error(fmt::format("{}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}", where));
		}
	}

	std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const {
		if (regex_) return regex_->find_all(text);
		std::vector<std::pair<size_t, size_t>> out;
		for (size_t at = text.find(literal_); at != std::string_view::npos;
		     at = text.find(literal_, at + literal_.size()))
			out.emplace_back(at, at + literal_.size());
		return out;
	}

	std::string replace_all(std::string_view text, std::string_view content) const {
		std::string out;
		size_t from = 0;
		for (const auto& [begin, end] : find_all(text)) {
			out.append(text.substr(from, begin - from));
			out.append(content);
			from = end;
		}
		out.append(text.substr(from));
		return out;
	}

private:
	std::string literal_;
	std::optional<Regex> regex_;
};

// --- the byte-level alphabet of GPT-2: every byte as a printable character ---

struct ByteAlphabet {
	std::array<std::string, 256> char_of; // UTF-8 of each byte's character
	std::unordered_map<char32_t, uint8_t> byte_of;

	ByteAlphabet() {
		char32_t next = 256;
		for (int b = 0; b < 256; ++b) {
			const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
			const char32_t cp = printable ? static_cast<char32_t>(b) : next++;
			append_utf8(char_of[static_cast<size_t>(b)], cp);
			byte_of[cp] = static_cast<uint8_t>(b);
		}
	}
};

const ByteAlphabet& byte_alphabet() {
	static const ByteAlphabet alphabet;
	return alphabet;
}

const std::string kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const std::string kMetaspace = "\xE2\x96\x81"; // ▁

std::string type_of(const json& j, const std::string& where) {
	if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
		throw Error(fmt::format("{}: expected an object with a \"type\"", where));
	return j["type"].get<std::string>();
}

bool flag(const json& j, const char* key, bool fallback) {
	const auto it = j.find(key);
	return it == j.end() || !it->is_boolean() ? fallback : it->get<bool>();
}

std::string string_field(const json& j, const char* key, const std::string& fallback) {
	const auto it = j.find(key);
	return it == j.end() || !it->is_string() ? fallback : it->get<std::string>();
}

// --- normalizers ---

struct Prepend {
	std::string text;
};
struct Replace {
	Pattern pattern;
	std::string content;
};
struct UnicodeForm {
	const icu::Normalizer2* normalizer;
};
using Normalizer = std::variant<Prepend, Replace, UnicodeForm>;

const icu::Normalizer2* icu_normalizer(const std::string& form) {
	UErrorCode status = U_ZERO_ERROR;
	const icu::Normalizer2* n = form == "NFC"    ? icu::Normalizer2::getNFCInstance(status)
	                            : form == "NFD"  ? icu::Normalizer2::getNFDInstance(status)
	                            : form == "NFKC" ? icu::Normalizer2::getNFKCInstance(status)
	                                             : icu::Normalizer2::getNFKDInstance(status);
	if (U_FAILURE(status)) throw Error(fmt::format("ICU has no {} normalizer: {}", form, u_errorName(status)));
	return n;
}

void parse_normalizer(const json& j, const std::string& where, std::vector<Normalizer>& out) {
	const auto type = type_of(j, where);
	if (type == "Sequence") {
		if (!j.contains("normalizers") || !j["normalizers"].is_array())
			throw Error(fmt::format("{}: a Sequence without \"normalizers\"", where));
		for (size_t i = 0; i < j["normalizers"].size(); ++i)
			parse_normalizer(j["normalizers"][i], fmt::format("{}.normalizers[{}]", where, i), out);
	} else if (type == "Prepend") {
		out.push_back(Prepend{string_field(j, "prepend", "")});
	} else if (type == "Replace") {
		out.push_back(Replace{Pattern(j.value("pattern", json()), where + ".pattern"), string_field(j, "content", "")});
	} else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
		out.push_back(UnicodeForm{icu_normalizer(type)});
	} else {
		throw Error(fmt::format("{}: normalizer {} is not supported (weld runs Sequence, Prepend, Replace, NFC, NFD, "
		                        "NFKC, NFKD)",
		                        where, quote_for_message(type)));
	}
}

std::string normalize(const std::vector<Normalizer>& normalizers, std::string text) {
	for (const auto& n : normalizers) {
		if (text.empty()) break; // the tokenizers library leaves an empty string alone (no Prepend)
		if (const auto* p = std::get_if<Prepend>(&n)) {
			text = p->text + text;
		} else if (const auto* r = std::get_if<Replace>(&n)) {
			text = r->pattern.replace_all(text, r->content);
		} else {
			UErrorCode status = U_ZERO_ERROR;
			std::string out;
			icu::StringByteSink<std::string> sink(&out);
			std::get<UnicodeForm>(n).normalizer->normalizeUTF8(0, icu::StringPiece(text.data(), text.size()), sink,
			                                                   nullptr, status);
			if (U_FAILURE(status)) throw Error(fmt::format("Unicode normalization failed: {}", u_errorName(status)));
			text = std::move(out);
		}
	}
	return text;
}

// --- pre-tokenizers: each maps a list of pieces to a finer list ---

struct Split {
	Pattern pattern;
	enum class Behavior { Isolated, Removed, MergedWithPrevious, MergedWithNext } behavior;
};
struct ByteLevel {
	bool add_prefix_space;
	std::optional<Regex> regex; // GPT-2's, when use_regex
};
struct Metaspace {
	std::string replacement;
	enum class Prepend { Always, First, Never } prepend;
	bool split;
};
using PreTokenizer = std::variant<Split, ByteLevel, Metaspace>;

Split::Behavior split_behavior(const json& j, const std::string& where) {
	const auto b = string_field(j, "behavior", "Isolated");
	if (b == "Isolated") return Split::Behavior::Isolated;
	if (b == "Removed") return Split::Behavior::Removed;
	if (b == "MergedWithPrevious") return Split::Behavior::MergedWithPrevious;
	if (b == "MergedWithNext") return Split::Behavior::MergedWithNext;
	throw Error(fmt::format("{}: Split behavior {} is not supported", where, quote_for_message(b)));
}

Metaspace parse_metaspace(const json& j, const std::string& where) {
	Metaspace m{string_field(j, "replacement", kMetaspace), Metaspace::Prepend::Always, flag(j, "split", true)};
	const auto scheme = string_field(j, "prepend_scheme", flag(j, "add_prefix_space", true) ? "always" : "never");
	if (scheme == "first")
		m.prepend = Metaspace::Prepend::First;
	else if (scheme == "never")
		m.prepend = Metaspace::Prepend::Never;
	else if (scheme != "always")
		throw Error(fmt::format("{}: prepend_scheme {} is not supported", where, quote_for_message(scheme)));
	return m;
}

void parse_pre_tokenizer(const json& j, const std::string& where, std::vector<PreTokenizer>& out) {
	const auto type = type_of(j, where);
	if (type == "Sequence") {
		if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
			throw Error(fmt::format("{}: a Sequence without \"pretokenizers\"", where));
		for (size_t i = 0; i < j["pretokenizers"].size(); ++i)
			parse_pre_tokenizer(j["pretokenizers"][i], fmt::format("{}.pretokenizers[{}]", where, i), out);
	} else if (type == "Split") {
		if (flag(j, "invert", false)) throw Error(fmt::format("{}: Split with invert is not supported", where));
		out.push_back(Split{Pattern(j.value("pattern", json()), where + ".pattern"), split_behavior(j, where)});
	} else if (type == "ByteLevel") {
		ByteLevel b{flag(j, "add_prefix_space", false), std::nullopt};
		if (flag(j, "use_regex", true)) b.regex.emplace(kGpt2Regex, where);
		out.push_back(std::move(b));
	} else if (type == "Metaspace") {
		out.push_back(parse_metaspace(j, where));
	} else {
		throw Error(fmt::format("{}: pre-tokenizer {} is not supported (weld runs Sequence, Split, ByteLevel, "
		                        "Metaspace)",
		                        where, quote_for_message(type)));
	}
}

// Pieces of text cut at the matches, kept or dropped as the behavior says.
void split_piece(const Split& s, const std::string& text, std::vector<std::string>& out) {
	size_t from = 0;
	std::string pending; // MergedWithNext: a match waiting for what follows it
	for (const auto& [begin, end] : s.pattern.find_all(text)) {
		if (begin == end) continue;
		std::string gap = text.substr(from, begin - from), match = text.substr(begin, end - begin);
		switch (s.behavior) {
		case Split::Behavior::Isolated:
			if (!gap.empty()) out.push_back(gap);
			out.push_back(match);
			break;
		case Split::Behavior::Removed:
			if (!gap.empty()) out.push_back(gap);
			break;
		case Split::Behavior::MergedWithPrevious:
			out.push_back(gap + match);
			break;
		case Split::Behavior::MergedWithNext:
			if (!pending.empty() || !gap.empty()) out.push_back(pending + gap);
			pending = match;
			break;
		}
		from = end;
	}
	const std::string rest = pending + text.substr(from);
	if (!rest.empty()) out.push_back(rest);
}

std::string to_byte_chars(std::string_view text) {
	std::string out;
	for (const char c : text)
		out += byte_alphabet().char_of[static_cast<uint8_t>(c)];
	return out;
}

void byte_level_piece(const ByteLevel& b, std::string text, std::vector<std::string>& out) {
	if (b.add_prefix_space && !text.starts_with(' ')) text = " " + text;
	if (!b.regex) {
		out.push_back(to_byte_chars(text));
		return;
	}
	for (const auto& [begin, end] : b.regex->find_all(text))
		if (end > begin) out.push_back(to_byte_chars(std::string_view(text).substr(begin, end - begin)));
}

void metaspace_piece(const Metaspace& m, const std::string& text, size_t section, std::vector<std::string>& out) {
	std::string s;
	for (const char c : text)
		s += c == ' ' ? m.replacement : std::string(1, c);
	const bool prepend =
	    m.prepend == Metaspace::Prepend::Always || (m.prepend == Metaspace::Prepend::First && section == 0);
	if (prepend && !s.starts_with(m.replacement)) s = m.replacement + s;
	if (!m.split) {
		out.push_back(s);
		return;
	}
	// Each replacement character starts a new piece (MergedWithNext).
	size_t start = 0;
	for (size_t at = s.find(m.replacement, 1); at != std::string::npos; at = s.find(m.replacement, at + 1)) {
		out.push_back(s.substr(start, at - start));
		start = at;
	}
	out.push_back(s.substr(start));
}

std::vector<std::string> pre_tokenize(const std::vector<PreTokenizer>& steps, const std::string& text, size_t section) {
	std::vector<std::string> pieces{text};
	for (const auto& step : steps) {
		std::vector<std::string> next;
		for (const auto& piece : pieces) {
			if (const auto* s = std::get_if<Split>(&step))
				split_piece(*s, piece, next);
			else if (const auto* b = std::get_if<ByteLevel>(&step))
				byte_level_piece(*b, piece, next);
			else
				metaspace_piece(std::get<Metaspace>(step), piece, section, next);
		}
		pieces = std::move(next);
	}
	return pieces;
}

// --- decoders: each maps a list of token strings to another ---

struct ByteLevelDecoder {};
struct ReplaceDecoder {
	Pattern pattern;
	std::string content;
};
struct ByteFallbackDecoder {};
struct FuseDecoder {};
struct StripDecoder {
	std::string content;
	size_t start, stop;
};
struct MetaspaceDecoder {
	std::string replacement;
	bool prepend;
};
using Decoder =
    std::variant<ByteLevelDecoder, ReplaceDecoder, ByteFallbackDecoder, FuseDecoder, StripDecoder, MetaspaceDecoder>;

void parse_decoder(const json& j, const std::string& where, std::vector<Decoder>& out) {
	const auto type = type_of(j, where);
	if (type == "Sequence") {
		if (!j.contains("decoders") || !j["decoders"].is_array())
			throw Error(fmt::format("{}: a Sequence without \"decoders\"", where));
		for (size_t i = 0; i < j["decoders"].size(); ++i)
			parse_decoder(j["decoders"][i], fmt::format("{}.decoders[{}]", where, i), out);
	} else if (type == "ByteLevel") {
		out.push_back(ByteLevelDecoder{});
	} else if (type == "Replace") {
		out.push_back(
		    ReplaceDecoder{Pattern(j.value("pattern", json()), where + ".pattern"), string_field(j, "content", "")});
	} else if (type == "ByteFallback") {
		out.push_back(ByteFallbackDecoder{});
	} else if (type == "Fuse") {
		out.push_back(FuseDecoder{});
	} else if (type == "Strip") {
		const auto count = [&](const char* key) {
			const auto it = j.find(key);
			return it != j.end() && it->is_number_unsigned() ? it->get<size_t>() : size_t{0};
		};
		out.push_back(StripDecoder{string_field(j, "content", " "), count("start"), count("stop")});
	} else if (type == "Metaspace") {
		const auto m = parse_metaspace(j, where);
		out.push_back(MetaspaceDecoder{m.replacement, m.prepend != Metaspace::Prepend::Never});
	} else {
		throw Error(fmt::format("{}: decoder {} is not supported (weld runs Sequence, ByteLevel, Replace, "
		                        "ByteFallback, Fuse, Strip, Metaspace)",
		                        where, quote_for_message(type)));
	}
}

// "<0x41>" -> 0x41.
std::optional<uint8_t> byte_token(std::string_view t) {
	if (t.size() != 6 || !t.starts_with("<0x") || t[5] != '>') return std::nullopt;
	int value = 0;
	for (const char c : t.substr(3, 2)) {
		const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (digit < 0) return std::nullopt;
		value = value * 16 + digit;
	}
	return static_cast<uint8_t>(value);
}

// Token strings of byte characters back to bytes; added tokens (not byte-level) pass as they are.
std::vector<std::string> decode_byte_level(const std::vector<std::string>& tokens,
                                           const std::unordered_set<std::string>& added) {
	std::vector<std::string> out;
	std::string bytes;
	auto flush = [&] {
		if (!bytes.empty()) out.push_back(decode_utf8_lossy(bytes));
		bytes.clear();
	};
	for (const auto& t : tokens) {
		if (added.count(t)) {
			flush();
			out.push_back(t);
			continue;
		}
		for (size_t i = 0; i < t.size();) {
			const auto cp = next_code_point(t, i);
			const auto it = cp ? byte_alphabet().byte_of.find(cp->value) : byte_alphabet().byte_of.end();
			if (it == byte_alphabet().byte_of.end()) { // not a byte character: its own bytes
				bytes += t[i++];
				continue;
			}
			bytes += static_cast<char>(it->second);
			i += cp->length;
		}
	}
	flush();
	return out;
}

std::vector<std::string> decode_byte_fallback(const std::vector<std::string>& tokens) {
	std::vector<std::string> out;
	std::string bytes;
	for (const auto& t : tokens) {
		if (const auto b = byte_token(t)) {
			bytes += static_cast<char>(*b);
			continue;
		}
		if (!bytes.empty()) out.push_back(decode_utf8_lossy(bytes));
		bytes.clear();
		out.push_back(t);
	}
	if (!bytes.empty()) out.push_back(decode_utf8_lossy(bytes));
	return out;
}

// Up to start leading and stop trailing copies of content (one character) removed.
std::string strip_token(const StripDecoder& s, std::string t) {
	for (size_t i = 0; i < s.start && t.starts_with(s.content); ++i)
		t.erase(0, s.content.size());
	for (size_t i = 0; i < s.stop && t.ends_with(s.content); ++i)
		t.erase(t.size() - s.content.size());
	return t;
}

std::vector<std::string> run_decoders(const std::vector<Decoder>& decoders, std::vector<std::string> tokens,
                                      const std::unordered_set<std::string>& added) {
	for (const auto& d : decoders) {
		if (std::holds_alternative<ByteLevelDecoder>(d)) {
			tokens = decode_byte_level(tokens, added);
		} else if (const auto* r = std::get_if<ReplaceDecoder>(&d)) {
			for (auto& t : tokens)
				t = r->pattern.replace_all(t, r->content);
		} else if (std::holds_alternative<ByteFallbackDecoder>(d)) {
			tokens = decode_byte_fallback(tokens);
		} else if (std::holds_alternative<FuseDecoder>(d)) {
			std::string all;
			for (const auto& t : tokens)
				all += t;
			tokens = {all};
		} else if (const auto* s = std::get_if<StripDecoder>(&d)) {
			for (auto& t : tokens)
				t = strip_token(*s, t);
		} else {
			const auto& m = std::get<MetaspaceDecoder>(d);
			for (size_t i = 0; i < tokens.size(); ++i) {
				std::string t;
				for (size_t at = 0; at < tokens[i].size();) {
					if (tokens[i].compare(at, m.replacement.size(), m.replacement) == 0) {
						t += ' ';
						at += m.replacement.size();
					} else {
						t += tokens[i][at++];
					}
				}
				if (i == 0 && m.prepend && t.starts_with(' ')) t.erase(0, 1);
				tokens[i] = t;
			}
		}
	}
	return tokens;
}

// transformers' clean_up_tokenization: spaces before punctuation and contractions removed.
std::string clean_up_tokenization(std::string text) {
	static const std::pair<const char*, const char*> kRules[] = {
	    {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
	    {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
	for (const auto& [from, to] : kRules) {
		std::string out;
		const std::string_view f(from);
		size_t start = 0;
		for (size_t at = text.find(f); at != std::string::npos; at = text.find(f, start)) {
			out.append(text, start, at - start);
			out.append(to);
			start = at + f.size();
		}
		out.append(text, start);
		text = std::move(out);
	}
	return text;
}

// --- the BPE model ---

struct AddedTokenEntry {
	int64_t id;
	std::string content;
	bool special, lstrip, rstrip, normalized;
};

// Leftmost-longest matching of added tokens, as the tokenizers library's AddedVocabulary splits.
class TokenMatcher {
public:
	void add(const std::string& content, const AddedTokenEntry* token) {
		if (content.empty()) return;
		auto& list = by_first_[static_cast<uint8_t>(content[0])];
		list.emplace_back(content, token);
		std::stable_sort(list.begin(), list.end(),
		                 [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
	}
	bool empty() const { return by_first_.empty(); }

	struct Section {
		std::string text;
		const AddedTokenEntry* token; // null for plain text
	};
	// The text cut into plain sections and added tokens, with lstrip/rstrip applied to the
	// neighbours of a token.
	std::vector<Section> split(const std::string& text) const {
		std::vector<Section> out;
		size_t start = 0;
		for (size_t i = 0; i < text.size();) {
			const auto* hit = match_at(text, i);
			if (!hit) {
				++i;
				continue;
			}
			if (i > start) out.push_back({text.substr(start, i - start), nullptr});
			out.push_back({hit->first, hit->second});
			i += hit->first.size();
			start = i;
		}
		if (start < text.size()) out.push_back({text.substr(start), nullptr});
		for (size_t i = 0; i < out.size(); ++i) {
			if (!out[i].token) continue;
			if (out[i].token->lstrip && i > 0 && !out[i - 1].token) out[i - 1].text = trim_end(out[i - 1].text);
			if (out[i].token->rstrip && i + 1 < out.size() && !out[i + 1].token)
				out[i + 1].text = trim_start(out[i + 1].text);
		}
		return out;
	}

private:
	using Entry = std::pair<std::string, const AddedTokenEntry*>;
	std::map<uint8_t, std::vector<Entry>> by_first_; // longest first

	const Entry* match_at(const std::string& text, size_t i) const {
		const auto it = by_first_.find(static_cast<uint8_t>(text[i]));
		if (it == by_first_.end()) return nullptr;
		for (const auto& e : it->second)
			if (text.compare(i, e.first.size(), e.first) == 0) return &e;
		return nullptr;
	}
};

uint64_t pair_key(int64_t a, int64_t b) {
	return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b);
}

} // namespace

struct Tokenizer::Impl {
	std::string label;
	std::vector<std::string> tokens; // by id; "" where no token has the id
	std::unordered_map<std::string, int64_t> vocab;
	std::unordered_map<uint64_t, std::pair<int64_t, int64_t>> merges; // (left, right) -> (rank, merged id)
	std::optional<int64_t> unk;
	bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
	std::array<std::optional<int64_t>, 256> byte_ids; // "<0xXX>" tokens

	std::vector<Normalizer> normalizers;
	std::vector<PreTokenizer> pre_tokenizers;
	std::vector<Decoder> decoders;
	std::vector<AddedTokenEntry> added;
	std::unordered_set<std::string> added_contents;
	TokenMatcher raw_matcher, normalized_matcher;

	std::vector<int64_t> prefix, suffix; // around every encoded text with add_special_tokens
	std::optional<int64_t> bos, eos;
	std::string bos_token, eos_token;
	bool clean_up_spaces = false;
	std::optional<std::string> chat_template;

	void load_model(const json& model);
	void load_added(const json& list);
	void load_post_processor(const json& j, const std::string& where);
	void apply_config(const json& config);
	int64_t id_of(const std::string& token, const std::string& where) const;

	void bpe_word(const std::string& word, std::vector<int64_t>& out) const;
	void merge_symbols(std::vector<int64_t>& symbols) const;
	void encode_section(const std::string& text, size_t section, std::vector<int64_t>& out) const;
};

int64_t Tokenizer::Impl::id_of(const std::string& token, const std::string& where) const {
	const auto it = vocab.find(token);
	if (it == vocab.end())
		throw Error(fmt::format("{}: {} names token {}, which is not in the vocabulary", label, where,
		                        quote_for_message(token)));
	return it->second;
}

void Tokenizer::Impl::load_model(const json& model) {
	const std::string type = model.is_object() && model.contains("type") && model["type"].is_string()
	                             ? model["type"].get<std::string>()
	                             : (model.is_object() && model.contains("merges") ? "BPE" : "");
	if (type != "BPE")
		throw Error(fmt::format("{}: model type {} is not supported; weld tokenizes with BPE models only", label,
		                        quote_for_message(type.empty() ? "(none)" : type)));
	if (model.contains("dropout") && !model["dropout"].is_null())
		throw Error(fmt::format("{}: BPE dropout is not supported", label));
	for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
		if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty())
			throw Error(fmt::format("{}: BPE {} is not supported", label, key));
	if (!model.contains("vocab") || !model["vocab"].is_object())
		throw Error(fmt::format("{}: model.vocab must be an object token -> id", label));
	for (const auto& [token, id] : model["vocab"].items()) {
		if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (int64_t{1} << 31))
			throw Error(fmt::format("{}: model.vocab[{}] is not a token id", label, quote_for_message(token)));
		const auto i = static_cast<size_t>(id.get<int64_t>());
		if (tokens.size() <= i) tokens.resize(i + 1);
		tokens[i] = token;
		vocab[token] = id.get<int64_t>();
	}
	byte_fallback = flag(model, "byte_fallback", false);
	fuse_unk = flag(model, "fuse_unk", false);
	ignore_merges = flag(model, "ignore_merges", false);
	if (model.contains("unk_token") && model["unk_token"].is_string())
		unk = id_of(model["unk_token"].get<std::string>(), "model.unk_token");
	for (int b = 0; b < 256; ++b)
		if (const auto it = vocab.find(fmt::format("<0x{:02X}>", b)); it != vocab.end())
			byte_ids[static_cast<size_t>(b)] = it->second;

	if (!model.contains("merges") || !model["merges"].is_array())
		throw Error(fmt::format("{}: model.merges must be a list", label));
	const auto& list = model["merges"];
	for (size_t rank = 0; rank < list.size(); ++rank) {
		const auto& m = list[rank];
		std::string left, right;
		if (m.is_string()) {
			const auto s = m.get<std::string>();
			const auto space = s.find(' ', 1);
			if (space == std::string::npos)
				throw Error(fmt::format("{}: merges[{}] is not \"left right\"", label, rank));
			left = s.substr(0, space), right = s.substr(space + 1);
		} else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
			left = m[0].get<std::string>(), right = m[1].get<std::string>();
		} else {
			throw Error(fmt::format("{}: merges[{}] is not a pair of tokens", label, rank));
		}
		const auto where = fmt::format("merges[{}]", rank);
		const int64_t left_id = id_of(left, where), right_id = id_of(right, where);
		const auto key = pair_key(left_id, right_id);
		merges.emplace(key, std::pair{static_cast<int64_t>(rank), id_of(left + right, where)});
	}
}

void Tokenizer::Impl::load_added(const json& list) {
	if (list.is_null()) return;
	if (!list.is_array()) throw Error(fmt::format("{}: added_tokens must be a list", label));
	for (size_t i = 0; i < list.size(); ++i) {
		const auto& t = list[i];
		if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || t["id"].get<int64_t>() < 0 ||
		    !t.contains("content") || !t["content"].is_string())
			throw Error(fmt::format("{}: added_tokens[{}] needs an id and a content", label, i));
		added.push_back({t["id"].get<int64_t>(), t["content"].get<std::string>(), flag(t, "special", false),
		                 flag(t, "lstrip", false), flag(t, "rstrip", false), flag(t, "normalized", true)});
		const auto& a = added.back();
		const auto id = static_cast<size_t>(a.id);
		if (tokens.size() <= id) tokens.resize(id + 1);
		tokens[id] = a.content;
		vocab[a.content] = a.id;
		added_contents.insert(a.content);
	}
	// Matchers point into `added`, which no longer grows.
	for (const auto& a : added) {
		if (a.normalized && !normalizers.empty())
			normalized_matcher.add(normalize(normalizers, a.content), &a);
		else
			raw_matcher.add(a.content, &a);
	}
}

void Tokenizer::Impl::load_post_processor(const json& j, const std::string& where) {
	if (j.is_null()) return;
	const auto type = type_of(j, where);
	if (type == "Sequence") {
		if (!j.contains("processors") || !j["processors"].is_array())
			throw Error(fmt::format("{}: a Sequence without \"processors\"", where));
		for (size_t i = 0; i < j["processors"].size(); ++i)
			load_post_processor(j["processors"][i], fmt::format("{}.processors[{}]", where, i));
		return;
	}
	if (type == "ByteLevel") return; // offsets only
	if (type != "TemplateProcessing")
		throw Error(fmt::format("{}: post-processor {} is not supported (weld runs TemplateProcessing, ByteLevel, "
		                        "Sequence)",
		                        where, quote_for_message(type)));
	if (!j.contains("single") || !j["single"].is_array())
		throw Error(fmt::format("{}: TemplateProcessing without a \"single\" template", where));
	bool after = false;
	for (const auto& item : j["single"]) {
		if (item.contains("Sequence")) {
			after = true;
		} else if (item.contains("SpecialToken") && item["SpecialToken"].contains("id")) {
			const auto name = item["SpecialToken"]["id"].get<std::string>();
			int64_t id = 0;
			const auto& specials = j.value("special_tokens", json::object());
			if (specials.contains(name) && specials[name].contains("ids") && specials[name]["ids"].size() == 1)
				id = specials[name]["ids"][0].get<int64_t>();
			else
				id = id_of(name, where);
			(after ? suffix : prefix).push_back(id);
		} else {
			throw Error(fmt::format("{}: an item of the single template is neither Sequence nor SpecialToken", where));
		}
	}
	if (!prefix.empty() && !bos) bos = prefix.front(), bos_token = tokens[static_cast<size_t>(prefix.front())];
}

// A token of tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> config_token(const json& config, const char* key) {
	const auto it = config.find(key);
	if (it == config.end()) return std::nullopt;
	if (it->is_string()) return it->get<std::string>();
	if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
		return (*it)["content"].get<std::string>();
	return std::nullopt;
}

void Tokenizer::Impl::apply_config(const json& config) {
	const std::string where = "tokenizer_config.json";
	if (const auto b = config_token(config, "bos_token")) bos = id_of(*b, where + " bos_token"), bos_token = *b;
	if (const auto e = config_token(config, "eos_token")) eos = id_of(*e, where + " eos_token"), eos_token = *e;
	clean_up_spaces = flag(config, "clean_up_tokenization_spaces", false);
	const bool says_bos = config.contains("add_bos_token") && config["add_bos_token"].is_boolean();
	const bool says_eos = config.contains("add_eos_token") && config["add_eos_token"].is_boolean();
	if (!says_bos && !says_eos) return; // the post-processor decides
	prefix.clear(), suffix.clear();
	if (flag(config, "add_bos_token", false)) {
		if (!bos) throw Error(fmt::format("{}: add_bos_token without a bos_token", where));
		prefix.push_back(*bos);
	}
	if (flag(config, "add_eos_token", false)) {
		if (!eos) throw Error(fmt::format("{}: add_eos_token without an eos_token", where));
		suffix.push_back(*eos);
	}
}

// Characters to ids (unknown ones as bytes or unk), then the merges, as the tokenizers library's
// BPE::merge_all.
void Tokenizer::Impl::bpe_word(const std::string& word, std::vector<int64_t>& out) const {
	if (ignore_merges)
		if (const auto it = vocab.find(word); it != vocab.end()) {
			out.push_back(it->second);
			return;
		}
	std::vector<int64_t> symbols;
	for (size_t i = 0; i < word.size();) {
		const size_t length = next_code_point(word, i)->length;
		const auto c = word.substr(i, length);
		i += length;
		if (const auto it = vocab.find(c); it != vocab.end()) {
			symbols.push_back(it->second);
			continue;
		}
		const bool bytes = byte_fallback && std::all_of(c.begin(), c.end(), [&](char b) {
			                   return byte_ids[static_cast<uint8_t>(b)].has_value();
		                   });
		if (bytes) {
			for (const char b : c)
				symbols.push_back(*byte_ids[static_cast<uint8_t>(b)]);
		} else if (unk) {
			if (!(fuse_unk && !symbols.empty() && symbols.back() == *unk)) symbols.push_back(*unk);
		}
	}
	merge_symbols(symbols);
	out.insert(out.end(), symbols.begin(), symbols.end());
}

// The merges of lowest rank first, the leftmost first among equals, in O(n log n): a heap of
// candidate pairs over a linked list of symbols, stale candidates skipped when popped.
void Tokenizer::Impl::merge_symbols(std::vector<int64_t>& symbols) const {
	const size_t n = symbols.size();
	if (n < 2) return;
	std::vector<size_t> next(n), prev(n);
	std::vector<bool> alive(n, true);
	for (size_t i = 0; i < n; ++i)
		next[i] = i + 1, prev[i] = i - 1;                            // prev[0] wraps to SIZE_MAX: none
	using Candidate = std::tuple<int64_t, size_t, int64_t, int64_t>; // rank, left position, left id, right id
	std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
	const auto offer = [&](size_t left) {
		if (left >= n || next[left] >= n) return;
		const auto it = merges.find(pair_key(symbols[left], symbols[next[left]]));
		if (it != merges.end()) heap.emplace(it->second.first, left, symbols[left], symbols[next[left]]);
	};
	for (size_t i = 0; i + 1 < n; ++i)
		offer(i);
	while (!heap.empty()) {
		const auto [rank, left, left_id, right_id] = heap.top();
		heap.pop();
		const size_t right = next[left];
		if (!alive[left] || right >= n || symbols[left] != left_id || symbols[right] != right_id) continue;
		symbols[left] = merges.at(pair_key(left_id, right_id)).second;
		alive[right] = false;
		next[left] = next[right];
		if (next[right] < n) prev[next[right]] = left;
		offer(prev[left]);
		offer(left);
	}
	std::vector<int64_t> kept;
	for (size_t i = 0; i < n; i = next[i])
		kept.push_back(symbols[i]);
	symbols = std::move(kept);
}

// A section of text between added tokens: normalized, split on normalized added tokens,
// pre-tokenized, and each piece run through BPE.
void Tokenizer::Impl::encode_section(const std::string& text, size_t section, std::vector<int64_t>& out) const {
	const auto normalized = normalize(normalizers, text);
	for (const auto& sub : normalized_matcher.split(normalized)) {
		if (sub.token) {
			out.push_back(sub.token->id);
			continue;
		}
		if (sub.text.empty()) continue;
		for (const auto& piece : pre_tokenize(pre_tokenizers, sub.text, section))
			bpe_word(piece, out);
	}
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_json(const json& tokenizer, const json* config, const std::string& label) {
	auto impl = std::make_unique<Impl>();
	impl->label = label;
	if (!tokenizer.is_object()) throw Error(fmt::format("{}: expected a JSON object", label));
	if (!tokenizer.contains("model")) throw Error(fmt::format("{}: no \"model\"; not a tokenizer.json", label));
	impl->load_model(tokenizer["model"]);
	const auto part = [&](const char* key) { return tokenizer.value(key, json()); };
	if (!part("normalizer").is_null()) parse_normalizer(part("normalizer"), label + ": normalizer", impl->normalizers);
	if (!part("pre_tokenizer").is_null())
		parse_pre_tokenizer(part("pre_tokenizer"), label + ": pre_tokenizer", impl->pre_tokenizers);
	if (!part("decoder").is_null()) parse_decoder(part("decoder"), label + ": decoder", impl->decoders);
	impl->load_added(part("added_tokens"));
	impl->load_post_processor(part("post_processor"), label + ": post_processor");
	if (config) impl->apply_config(*config);
	return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::load(const fs::path& dir) {
	const auto path = dir / "tokenizer.json";
	if (!fs::is_regular_file(path)) throw Error(fmt::format("{}: no such file", show(path)));
	json tokenizer;
	try {
		tokenizer = json::parse(read_text_file(path));
	} catch (const json::exception& e) {
		throw Error(fmt::format("{}: not JSON: {}", show(path), escape_for_message(e.what(), 200)));
	}
	std::optional<json> config;
	if (const auto ordered = read_tokenizer_config(dir)) config = json::parse(ordered->dump());
	auto t = from_json(tokenizer, config ? &*config : nullptr, show(path));
	t.impl_->chat_template = read_chat_template(dir);
	return t;
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
	if (!valid_utf8(text)) throw Error("text to tokenize is not valid UTF-8");
	const auto& m = *impl_;
	std::vector<int64_t> out;
	if (add_special_tokens) out = m.prefix;
	const auto sections = m.raw_matcher.split(std::string(text));
	for (size_t i = 0; i < sections.size(); ++i) {
		if (sections[i].token)
			out.push_back(sections[i].token->id);
		else if (!sections[i].text.empty())
			m.encode_section(sections[i].text, i, out);
	}
	if (add_special_tokens) out.insert(out.end(), m.suffix.begin(), m.suffix.end());
	return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
	const auto& m = *impl_;
	std::vector<std::string> tokens;
	for (const auto id : ids) {
		if (id < 0 || id >= id_span() || m.tokens[static_cast<size_t>(id)].empty())
			throw Error(fmt::format("{}: token id {} is not in the vocabulary", m.label, id));
		if (skip_special_tokens && is_special(id)) continue;
		tokens.push_back(m.tokens[static_cast<size_t>(id)]);
	}
	std::string text;
	for (const auto& t : run_decoders(m.decoders, std::move(tokens), m.added_contents))
		text += t;
	return m.clean_up_spaces ? clean_up_tokenization(std::move(text)) : text;
}

int64_t Tokenizer::id_span() const {
	return static_cast<int64_t>(impl_->tokens.size());
}

std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const {
	const auto it = impl_->vocab.find(std::string(token));
	return it == impl_->vocab.end() ? std::nullopt : std::optional(it->second);
}

std::optional<int64_t> Tokenizer::bos_id() const {
	return impl_->bos;
}
std::optional<int64_t> Tokenizer::eos_id() const {
	return impl_->eos;
}
const std::string& Tokenizer::bos_token() const {
	return impl_->bos_token;
}
const std::string& Tokenizer::eos_token() const {
	return impl_->eos_token;
}
const std::optional<std::string>& Tokenizer::chat_template() const {
	return impl_->chat_template;
}

bool Tokenizer::is_special(int64_t id) const {
	return std::any_of(impl_->added.begin(), impl_->added.end(),
	                   [&](const AddedTokenEntry& a) { return a.id == id && a.special; });
}

} // namespace weld::text
