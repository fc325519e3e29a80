#include "text/jinja.h"

#include "text/unicode.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <set>
#include <variant>
#include <vector>

namespace weld::text {

namespace {

using ordered_json = nlohmann::ordered_json;

struct Pos {
	int line = 1, column = 1;
};

// --- values ---

struct Value;
struct Undefined {};
struct None {};
struct List {
	std::vector<Value> items;
};
struct Dict {
	std::vector<std::pair<std::string, Value>> items; // in insertion order
	bool is_namespace = false;
	Value* find(const std::string& key);
	const Value* find(const std::string& key) const { return const_cast<Dict*>(this)->find(key); }
	void set(const std::string& key, Value value);
};
struct Args;
using Function = std::function<Value(Args&)>;

struct Value {
	std::variant<Undefined, None, bool, int64_t, double, std::string, std::shared_ptr<List>, std::shared_ptr<Dict>,
	             std::shared_ptr<Function>>
	    v;

	Value() = default;
	template <class T>
	requires std::is_constructible_v<decltype(v), T> Value(T x) : v(std::move(x)) {}
	Value(const char* s) : v(std::string(s)) {}
	Value(int x) : v(int64_t{x}) {}
	Value(size_t x) : v(static_cast<int64_t>(x)) {}

	template <class T> bool is() const { return std::holds_alternative<T>(v); }
	template <class T> const T* as() const { return std::get_if<T>(&v); }
	bool undefined() const { return is<Undefined>(); }
	bool number() const { return is<int64_t>() || is<double>(); }
	double to_double() const { return is<int64_t>() ? static_cast<double>(std::get<int64_t>(v)) : std::get<double>(v); }
	List* list() const { return is<std::shared_ptr<List>>() ? std::get<std::shared_ptr<List>>(v).get() : nullptr; }
	Dict* dict() const { return is<std::shared_ptr<Dict>>() ? std::get<std::shared_ptr<Dict>>(v).get() : nullptr; }
	const std::string* str() const { return as<std::string>(); }
};

Value* Dict::find(const std::string& key) {
	for (auto& [k, v] : items)
		if (k == key) return &v;
	return nullptr;
}
void Dict::set(const std::string& key, Value value) {
	if (auto* slot = find(key))
		*slot = std::move(value);
	else
		items.emplace_back(key, std::move(value));
}

Value make_list(std::vector<Value> items = {}) {
	return std::make_shared<List>(List{std::move(items)});
}
Value make_dict() {
	return std::make_shared<Dict>();
}
Value make_function(Function f) {
	return std::make_shared<Function>(std::move(f));
}

// An error at a position of the template; the renderer adds the template's name.
struct TemplateError {
	Pos pos;
	std::string message;
};
[[noreturn]] void fail(Pos pos, std::string message) {
	throw TemplateError{pos, std::move(message)};
}

// Positional and keyword arguments of a call, filter or test.
struct Args {
	Pos pos;
	std::vector<Value> positional;
	std::vector<std::pair<std::string, Value>> keyword;

	Value get(size_t index, const char* name, Value fallback = Undefined{}) const {
		for (const auto& [k, v] : keyword)
			if (k == name) return v;
		return index < positional.size() ? positional[index] : fallback;
	}
	Value required(size_t index, const char* name, const char* what) const {
		auto v = get(index, name);
		if (v.undefined()) fail(pos, fmt::format("{} needs argument '{}'", what, name));
		return v;
	}
};

bool truthy(const Value& v) {
	return std::visit(
	    [](const auto& x) -> bool {
		    using T = std::decay_t<decltype(x)>;
		    if constexpr (std::is_same_v<T, Undefined> || std::is_same_v<T, None>)
			    return false;
		    else if constexpr (std::is_same_v<T, bool>)
			    return x;
		    else if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, double>)
			    return x != 0;
		    else if constexpr (std::is_same_v<T, std::string>)
			    return !x.empty();
		    else if constexpr (std::is_same_v<T, std::shared_ptr<List>>)
			    return !x->items.empty();
		    else if constexpr (std::is_same_v<T, std::shared_ptr<Dict>>)
			    return !x->items.empty();
		    else
			    return true;
	    },
	    v.v);
}

std::string python_float(double d) {
	if (std::isnan(d)) return "nan";
	if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
	auto s = fmt::format("{}", d);
	if (s.find_first_of(".e") == std::string::npos) s += ".0";
	return s;
}

std::string repr(const Value& v);

// Python's str() of a value, as {{ }} prints it.
std::string to_string(const Value& v) {
	if (const auto* s = v.str()) return *s;
	if (v.undefined()) return "";
	return repr(v);
}

std::string repr(const Value& v) {
	if (v.undefined()) return "";
	if (v.is<None>()) return "None";
	if (const auto* b = v.as<bool>()) return *b ? "True" : "False";
	if (const auto* i = v.as<int64_t>()) return std::to_string(*i);
	if (const auto* d = v.as<double>()) return python_float(*d);
	if (const auto* s = v.str()) {
		std::string out = "'";
		for (const char c : *s)
			out += c == '\'' ? "\\'" : c == '\\' ? "\\\\" : c == '\n' ? "\\n" : std::string(1, c);
		return out + "'";
	}
	if (const auto* l = v.list()) {
		std::string out = "[";
		for (size_t i = 0; i < l->items.size(); ++i)
			out += (i ? ", " : "") + repr(l->items[i]);
		return out + "]";
	}
	if (const auto* d = v.dict()) {
		std::string out = "{";
		for (size_t i = 0; i < d->items.size(); ++i)
			out += (i ? ", " : "") + repr(Value(d->items[i].first)) + ": " + repr(d->items[i].second);
		return out + "}";
	}
	return "<function>";
}

// tojson: Python's json.dumps(ensure_ascii=False) with its default separators, or an indent.
void to_json(const Value& v, std::string& out, std::optional<int64_t> indent, int depth, Pos pos) {
	auto newline = [&](int d) {
		if (indent) out += "\n" + std::string(static_cast<size_t>(*indent * d), ' ');
	};
	const char* item_sep = indent ? "," : ", ";
	if (v.undefined() || v.is<None>()) {
		out += "null";
	} else if (const auto* b = v.as<bool>()) {
		out += *b ? "true" : "false";
	} else if (v.number()) {
		out += v.is<int64_t>() ? std::to_string(*v.as<int64_t>()) : python_float(*v.as<double>());
	} else if (const auto* s = v.str()) {
		out += ordered_json(*s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
	} else if (const auto* l = v.list()) {
		out += "[";
		for (size_t i = 0; i < l->items.size(); ++i) {
			if (i) out += item_sep;
			newline(depth + 1);
			to_json(l->items[i], out, indent, depth + 1, pos);
		}
		if (!l->items.empty()) newline(depth);
		out += "]";
	} else if (const auto* d = v.dict()) {
		out += "{";
		for (size_t i = 0; i < d->items.size(); ++i) {
			if (i) out += item_sep;
			newline(depth + 1);
			out += ordered_json(d->items[i].first).dump() + ": ";
			to_json(d->items[i].second, out, indent, depth + 1, pos);
		}
		if (!d->items.empty()) newline(depth);
		out += "}";
	} else {
		fail(pos, "tojson: a function cannot be written as JSON");
	}
}

Value from_json(const ordered_json& j) {
	switch (j.type()) {
	case ordered_json::value_t::null:
		return None{};
	case ordered_json::value_t::boolean:
		return j.get<bool>();
	case ordered_json::value_t::number_integer:
	case ordered_json::value_t::number_unsigned:
		return j.get<int64_t>();
	case ordered_json::value_t::number_float:
		return j.get<double>();
	case ordered_json::value_t::string:
		return j.get<std::string>();
	case ordered_json::value_t::array: {
		std::vector<Value> items;
		for (const auto& e : j)
			items.push_back(from_json(e));
		return make_list(std::move(items));
	}
	case ordered_json::value_t::object: {
		auto d = make_dict();
		for (const auto& [k, e] : j.items())
			d.dict()->set(k, from_json(e));
		return d;
	}
	default:
		return Undefined{};
	}
}

bool equal(const Value& a, const Value& b) {
	if (a.number() && b.number()) return a.to_double() == b.to_double();
	if (a.is<bool>() && b.is<bool>()) return *a.as<bool>() == *b.as<bool>();
	if (a.str() && b.str()) return *a.str() == *b.str();
	if ((a.is<None>() && b.is<None>()) || (a.undefined() && b.undefined())) return true;
	if (a.list() && b.list()) {
		const auto &x = a.list()->items, &y = b.list()->items;
		if (x.size() != y.size()) return false;
		for (size_t i = 0; i < x.size(); ++i)
			if (!equal(x[i], y[i])) return false;
		return true;
	}
	if (a.dict() && b.dict()) {
		const auto &x = a.dict()->items, &y = b.dict()->items;
		if (x.size() != y.size()) return false;
		for (const auto& [k, v] : x) {
			auto* other = b.dict()->find(k);
			if (!other || !equal(v, *other)) return false;
		}
		return true;
	}
	return false;
}

// Strings as code points, for indexing, slicing and length as Python counts them.
std::u32string code_points(const std::string& s) {
	std::u32string out;
	for (size_t i = 0; i < s.size();) {
		const auto cp = next_code_point(s, i);
		if (!cp) {
			out += U'\uFFFD';
			++i;
			continue;
		}
		out += cp->value;
		i += cp->length;
	}
	return out;
}
std::string utf8(const std::u32string& s) {
	std::string out;
	for (const char32_t c : s)
		append_utf8(out, c);
	return out;
}

int64_t length_of(const Value& v, Pos pos) {
	if (const auto* s = v.str()) return static_cast<int64_t>(code_points(*s).size());
	if (const auto* l = v.list()) return static_cast<int64_t>(l->items.size());
	if (const auto* d = v.dict()) return static_cast<int64_t>(d->items.size());
	if (v.undefined()) return 0;
	fail(pos, fmt::format("length of {}, which has none", repr(v)));
}

// The items a for loop (or a filter) walks: a list's items, a dict's keys, a string's characters.
std::vector<Value> iterate(const Value& v, Pos pos) {
	if (const auto* l = v.list()) return l->items;
	if (const auto* d = v.dict()) {
		std::vector<Value> keys;
		for (const auto& [k, unused] : d->items)
			keys.emplace_back(k);
		return keys;
	}
	if (const auto* s = v.str()) {
		std::vector<Value> chars;
		for (const char32_t c : code_points(*s))
			chars.emplace_back(utf8(std::u32string(1, c)));
		return chars;
	}
	if (v.undefined()) return {};
	fail(pos, fmt::format("{} is not iterable", repr(v)));
}

// --- lexing: text and tags, with Jinja's whitespace control ---

struct Token {
	enum class Type { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End } type;
	std::string text;
	Pos pos;
};

class Lexer {
public:
	Lexer(const std::string& source) : src_(source) {
		if (src_.ends_with('\n')) src_.pop_back(); // keep_trailing_newline=False
	}

	std::vector<Token> run() {
		std::vector<Token> out;
		bool trim_next = false, block_before = false; // what the previous tag asks of the next text
		while (at_ < src_.size()) {
			const size_t open = find_tag();
			std::string text = src_.substr(at_, open - at_);
			const Pos text_pos = pos_;
			advance_to(open);
			if (trim_next)
				text = std::string(trim_left_ws(text));
			else if (block_before && text.starts_with('\n'))
				text.erase(0, 1); // trim_blocks
			if (open < src_.size()) {
				const char kind = src_[open + 1];
				const char marker = open + 2 < src_.size() ? src_[open + 2] : '\0';
				if (marker == '-')
					text = trim_right_ws(text);
				else if (kind != '{' && marker != '+')
					text = lstrip_block(text);
			}
			if (!text.empty()) out.push_back({Token::Type::Text, text, text_pos});
			if (open >= src_.size()) break;
			const char kind = src_[open + 1];
			advance_to(open + 2);
			if (at_ < src_.size() && (src_[at_] == '-' || src_[at_] == '+')) advance_to(at_ + 1);
			bool trimmed = false;
			if (kind == '#') {
				trimmed = skip_comment();
			} else {
				out.push_back({kind == '{' ? Token::Type::VarBegin : Token::Type::BlockBegin, "", pos_});
				trimmed = lex_tag(kind == '{' ? '}' : '%', out);
			}
			trim_next = trimmed;
			block_before = kind != '{';
		}
		out.push_back({Token::Type::End, "", pos_});
		return out;
	}

private:
	std::string src_;
	size_t at_ = 0;
	Pos pos_;

	void advance_to(size_t to) {
		for (; at_ < to; ++at_) {
			if (src_[at_] == '\n') {
				++pos_.line;
				pos_.column = 1;
			} else if ((static_cast<uint8_t>(src_[at_]) & 0xC0) != 0x80) {
				++pos_.column;
			}
		}
	}
	size_t find_tag() const {
		for (size_t i = at_; i + 1 < src_.size(); ++i)
			if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
		return src_.size();
	}
	static std::string_view trim_left_ws(std::string_view s) {
		const auto i = s.find_first_not_of(" \t\r\n\f\v");
		return i == std::string_view::npos ? std::string_view() : s.substr(i);
	}
	static std::string trim_right_ws(const std::string& s) {
		const auto i = s.find_last_not_of(" \t\r\n\f\v");
		return i == std::string::npos ? std::string() : s.substr(0, i + 1);
	}
	// lstrip_blocks: spaces and tabs between a line's start and a block tag go.
	std::string lstrip_block(const std::string& text) const {
		const auto i = text.find_last_not_of(" \t");
		if (i == std::string::npos) {
			// Only blanks: stripped when they start a line (or the template).
			const size_t start = at_ - text.size();
			return start == 0 || src_[start - 1] == '\n' ? std::string() : text;
		}
		return text[i] == '\n' ? text.substr(0, i + 1) : text;
	}
	// Returns whether the comment ends with "-#}".
	bool skip_comment() {
		const auto end = src_.find("#}", at_);
		if (end == std::string::npos) fail(pos_, "unclosed comment");
		const bool trim = end > at_ && src_[end - 1] == '-';
		advance_to(end + 2);
		return trim;
	}
	// The tokens of a tag up to its closing "}}" or "%}"; returns whether it was "-}}" / "-%}".
	bool lex_tag(char closer, std::vector<Token>& out) {
		const auto end_type = closer == '}' ? Token::Type::VarEnd : Token::Type::BlockEnd;
		while (true) {
			while (at_ < src_.size() && std::isspace(static_cast<unsigned char>(src_[at_])))
				advance_to(at_ + 1);
			if (at_ >= src_.size()) fail(pos_, closer == '}' ? "unclosed '{{'" : "unclosed '{%'");
			const Pos start = pos_;
			const char c = src_[at_];
			const bool dash_close = c == '-' && src_.compare(at_ + 1, 2, std::string{closer, '}'}) == 0;
			if (dash_close || src_.compare(at_, 2, std::string{closer, '}'}) == 0) {
				advance_to(at_ + (dash_close ? 3 : 2));
				out.push_back({end_type, "", start});
				return dash_close;
			}
			if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
				size_t e = at_;
				while (e < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_'))
					++e;
				out.push_back({Token::Type::Name, src_.substr(at_, e - at_), start});
				advance_to(e);
			} else if (std::isdigit(static_cast<unsigned char>(c))) {
				size_t e = at_;
				while (e < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_'))
					++e;
				bool is_float = false;
				if (e + 1 < src_.size() && src_[e] == '.' && std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
					is_float = true;
					for (++e; e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]));)
						++e;
				}
				std::string digits = src_.substr(at_, e - at_);
				std::erase(digits, '_');
				out.push_back({is_float ? Token::Type::Float : Token::Type::Int, digits, start});
				advance_to(e);
			} else if (c == '\'' || c == '"') {
				out.push_back({Token::Type::String, lex_string(c), start});
			} else {
				static const char* kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
				                             ">",  "(",  ")",  "[",  "]",  "{",  "}", ",", ".", ":", "|", "=", "?"};
				const char* op = nullptr;
				for (const char* o : kOps)
					if (src_.compare(at_, std::strlen(o), o) == 0) {
						op = o;
						break;
					}
				if (!op) fail(start, fmt::format("unexpected character '{}'", c));
				out.push_back({Token::Type::Op, op, start});
				advance_to(at_ + std::strlen(op));
			}
		}
	}
	std::string lex_string(char quote) {
		const Pos start = pos_;
		std::string out;
		size_t i = at_ + 1;
		for (; i < src_.size() && src_[i] != quote; ++i) {
			if (src_[i] != '\\' || i + 1 >= src_.size()) {
				out += src_[i];
				continue;
			}
			const char e = src_[++i];
			switch (e) {
			case 'n':
				out += '\n';
				break;
			case 't':
				out += '\t';
				break;
			case 'r':
				out += '\r';
				break;
			case '\\':
				out += '\\';
				break;
			case '\'':
				out += '\'';
				break;
			case '"':
				out += '"';
				break;
			case '\n':
				break;
			default:
				out += '\\', out += e;
			}
		}
		if (i >= src_.size()) fail(start, "unclosed string literal");
		advance_to(i + 1);
		return out;
	}
};

// --- syntax tree ---

struct Expr {
	enum class Kind {
		Literal,
		Name,
		Attr,
		Index,
		Slice,
		Call,
		Filter,
		Test,
		Unary,
		Binary,
		And,
		Or,
		Compare,
		Ternary,
		ListLit,
		DictLit
	} kind;
	Pos pos;
	std::string name; // Name, Attr, Filter, Test, Unary/Binary operator
	Value literal;
	std::vector<std::unique_ptr<Expr>> kids;
	std::vector<std::string> keywords; // of Call/Filter/Test arguments ("" for positional); Compare operators
	bool negated = false;              // "is not"
};
using ExprPtr = std::unique_ptr<Expr>;

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;
struct Stmt {
	enum class Kind { Text, Output, If, For, Set, SetBlock, Break, Continue } kind;
	Pos pos;
	std::string text;                 // Text; Set/SetBlock target name
	std::string attr;                 // Set ns.attr
	std::vector<std::string> targets; // For loop variables
	std::vector<ExprPtr> exprs;       // Output/Set value; If conditions; For iterable and filter
	std::vector<Body> bodies;         // If branches (+ else); For body (+ else); SetBlock body
};

std::unique_ptr<Stmt> make_stmt(Stmt::Kind kind, Pos pos, std::string text = {}) {
	auto s = std::make_unique<Stmt>();
	s->kind = kind;
	s->pos = pos;
	s->text = std::move(text);
	return s;
}

const std::set<std::string> kFilters = {
    "trim",  "length", "count",   "upper", "lower", "title",      "capitalize", "tojson", "default", "d",
    "first", "last",   "replace", "join",  "list",  "selectattr", "rejectattr", "map",    "reverse", "string",
    "int",   "float",  "abs",     "items", "safe",  "unique",     "e",          "escape", "indent",  "wordcount"};
const std::set<std::string> kTests = {"defined", "undefined", "none",    "string",   "number",      "integer",
                                      "float",   "boolean",   "mapping", "iterable", "sequence",    "callable",
                                      "true",    "false",     "odd",     "even",     "divisibleby", "eq",
                                      "equalto", "==",        "ne",      "!=",       "lt",          "gt",
                                      "in",      "lower",     "upper",   "sameas"};

class Parser {
public:
	explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

	Body parse_template() {
		auto body = parse_body({});
		if (peek().type != Token::Type::End) fail(peek().pos, "unexpected tag");
		return body;
	}

private:
	std::vector<Token> t_;
	size_t i_ = 0;

	const Token& peek(size_t ahead = 0) const { return t_[std::min(i_ + ahead, t_.size() - 1)]; }
	const Token& next() { return t_[std::min(i_++, t_.size() - 1)]; }
	bool at_op(const char* op) const { return peek().type == Token::Type::Op && peek().text == op; }
	bool at_name(const char* n) const { return peek().type == Token::Type::Name && peek().text == n; }
	void expect_op(const char* op) {
		if (!at_op(op)) fail(peek().pos, fmt::format("expected '{}'{}", op, found()));
		++i_;
	}
	void expect_end() {
		if (peek().type != Token::Type::BlockEnd) fail(peek().pos, "expected '%}'" + found());
		++i_;
	}
	std::string found() const {
		const auto& t = peek();
		if (t.type == Token::Type::End) return ", found the end of the template";
		if (t.type == Token::Type::BlockEnd) return ", found '%}'";
		if (t.type == Token::Type::VarEnd) return ", found '}}'";
		return fmt::format(", found '{}'", t.text);
	}
	std::string expect_name() {
		if (peek().type != Token::Type::Name) fail(peek().pos, "expected a name" + found());
		return next().text;
	}

	// Statements until a block tag whose keyword is in `stops` (left unconsumed: its "{%" and keyword).
	Body parse_body(const std::set<std::string>& stops) {
		Body body;
		while (true) {
			const auto& t = peek();
			if (t.type == Token::Type::End) {
				if (!stops.empty()) fail(t.pos, fmt::format("missing '{{% {} %}}'", *stops.rbegin()));
				return body;
			}
			if (t.type == Token::Type::Text) {
				body.push_back(make_stmt(Stmt::Kind::Text, t.pos, t.text));
				++i_;
			} else if (t.type == Token::Type::VarBegin) {
				++i_;
				auto s = make_stmt(Stmt::Kind::Output, t.pos);
				s->exprs.push_back(parse_expression());
				if (peek().type != Token::Type::VarEnd) fail(peek().pos, "expected '}}'" + found());
				++i_;
				body.push_back(std::move(s));
			} else if (t.type == Token::Type::BlockBegin) {
				const auto& keyword = peek(1);
				if (keyword.type == Token::Type::Name && stops.count(keyword.text)) return body;
				++i_;
				if (auto s = parse_statement()) body.push_back(std::move(s));
			} else {
				fail(t.pos, "unexpected token");
			}
		}
	}

	std::unique_ptr<Stmt> parse_statement() {
		const Pos pos = peek().pos;
		const auto keyword = expect_name();
		if (keyword == "if") return parse_if(pos);
		if (keyword == "for") return parse_for(pos);
		if (keyword == "set") return parse_set(pos);
		if (keyword == "break" || keyword == "continue") {
			expect_end();
			return make_stmt(keyword == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue, pos);
		}
		if (keyword == "generation" || keyword == "endgeneration") { // transformers' assistant mask marker
			expect_end();
			return nullptr;
		}
		fail(pos, fmt::format("unsupported tag '{}' (weld's Jinja runs if, for, set, break, continue)", keyword));
	}

	void close(const char* keyword) {
		++i_; // "{%"
		const auto& t = next();
		if (t.text != keyword) fail(t.pos, fmt::format("expected '{}'", keyword));
		expect_end();
	}

	std::unique_ptr<Stmt> parse_if(Pos pos) {
		auto s = make_stmt(Stmt::Kind::If, pos);
		s->exprs.push_back(parse_expression());
		expect_end();
		while (true) {
			s->bodies.push_back(parse_body({"elif", "else", "endif"}));
			++i_; // "{%"
			const auto keyword = next().text;
			if (keyword == "elif") {
				s->exprs.push_back(parse_expression());
				expect_end();
			} else if (keyword == "else") {
				expect_end();
				s->bodies.push_back(parse_body({"endif"}));
				close("endif");
				return s;
			} else {
				expect_end();
				return s;
			}
		}
	}

	std::unique_ptr<Stmt> parse_for(Pos pos) {
		auto s = make_stmt(Stmt::Kind::For, pos);
		s->targets.push_back(expect_name());
		while (at_op(",")) {
			++i_;
			s->targets.push_back(expect_name());
		}
		if (!at_name("in")) fail(peek().pos, "expected 'in'" + found());
		++i_;
		s->exprs.push_back(parse_or_expr());
		if (at_name("if")) {
			++i_;
			s->exprs.push_back(parse_or_expr());
		}
		if (at_name("recursive")) fail(peek().pos, "recursive loops are not supported");
		expect_end();
		s->bodies.push_back(parse_body({"else", "endfor"}));
		++i_;
		if (next().text == "else") {
			expect_end();
			s->bodies.push_back(parse_body({"endfor"}));
			close("endfor");
		} else {
			expect_end();
		}
		return s;
	}

	std::unique_ptr<Stmt> parse_set(Pos pos) {
		auto s = make_stmt(Stmt::Kind::Set, pos);
		s->text = expect_name();
		if (at_op(".")) {
			++i_;
			s->attr = expect_name();
		}
		if (peek().type == Token::Type::BlockEnd && s->attr.empty()) {
			++i_;
			s->kind = Stmt::Kind::SetBlock;
			s->bodies.push_back(parse_body({"endset"}));
			close("endset");
			return s;
		}
		expect_op("=");
		s->exprs.push_back(parse_expression());
		expect_end();
		return s;
	}

	ExprPtr node(Expr::Kind kind, Pos pos, std::string name = {}) {
		auto e = std::make_unique<Expr>();
		e->kind = kind;
		e->pos = pos;
		e->name = std::move(name);
		return e;
	}

	// expression: or-expression [if or-expression [else expression]]
	ExprPtr parse_expression() {
		auto value = parse_or_expr();
		if (!at_name("if")) return value;
		auto e = node(Expr::Kind::Ternary, next().pos);
		e->kids.push_back(std::move(value));
		e->kids.push_back(parse_or_expr());
		if (at_name("else")) {
			++i_;
			e->kids.push_back(parse_expression());
		}
		return e;
	}
	ExprPtr parse_or_expr() {
		auto left = parse_and();
		while (at_name("or")) {
			auto e = node(Expr::Kind::Or, next().pos);
			e->kids.push_back(std::move(left));
			e->kids.push_back(parse_and());
			left = std::move(e);
		}
		return left;
	}
	ExprPtr parse_and() {
		auto left = parse_not();
		while (at_name("and")) {
			auto e = node(Expr::Kind::And, next().pos);
			e->kids.push_back(std::move(left));
			e->kids.push_back(parse_not());
			left = std::move(e);
		}
		return left;
	}
	ExprPtr parse_not() {
		if (!at_name("not")) return parse_compare();
		auto e = node(Expr::Kind::Unary, next().pos, "not");
		e->kids.push_back(parse_not());
		return e;
	}
	ExprPtr parse_compare() {
		auto first = parse_math1();
		ExprPtr e;
		while (true) {
			std::string op;
			const Pos pos = peek().pos;
			if (peek().type == Token::Type::Op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
			                                       peek().text == ">" || peek().text == "<=" || peek().text == ">=")) {
				op = next().text;
			} else if (at_name("in")) {
				++i_;
				op = "in";
			} else if (at_name("not") && peek(1).type == Token::Type::Name && peek(1).text == "in") {
				i_ += 2;
				op = "not in";
			} else {
				break;
			}
			if (!e) {
				e = node(Expr::Kind::Compare, pos);
				e->kids.push_back(std::move(first));
			}
			e->keywords.push_back(op);
			e->kids.push_back(parse_math1());
		}
		return e ? std::move(e) : std::move(first);
	}
	ExprPtr binary(const std::string& op, Pos pos, ExprPtr left, ExprPtr right) {
		auto e = node(Expr::Kind::Binary, pos, op);
		e->kids.push_back(std::move(left));
		e->kids.push_back(std::move(right));
		return e;
	}
	ExprPtr parse_math1() {
		auto left = parse_concat();
		while (at_op("+") || at_op("-")) {
			const auto& op = next();
			left = binary(op.text, op.pos, std::move(left), parse_concat());
		}
		return left;
	}
	ExprPtr parse_concat() {
		auto left = parse_math2();
		while (at_op("~")) {
			const auto& op = next();
			left = binary("~", op.pos, std::move(left), parse_math2());
		}
		return left;
	}
	ExprPtr parse_math2() {
		auto left = parse_pow();
		while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
			const auto& op = next();
			left = binary(op.text, op.pos, std::move(left), parse_pow());
		}
		return left;
	}
	ExprPtr parse_pow() {
		auto left = parse_unary(true);
		while (at_op("**")) {
			const auto& op = next();
			left = binary("**", op.pos, std::move(left), parse_unary(true));
		}
		return left;
	}
	ExprPtr parse_unary(bool with_filters) {
		if (at_op("-") || at_op("+")) {
			const auto& op = next();
			auto e = node(Expr::Kind::Unary, op.pos, op.text);
			e->kids.push_back(parse_unary(false));
			return with_filters ? parse_filters(std::move(e)) : std::move(e);
		}
		auto e = parse_postfix(parse_primary());
		return with_filters ? parse_filters(std::move(e)) : std::move(e);
	}

	void parse_call_args(Expr& e) {
		expect_op("(");
		while (!at_op(")")) {
			if (peek().type == Token::Type::Name && peek(1).type == Token::Type::Op && peek(1).text == "=") {
				e.keywords.push_back(next().text);
				++i_;
			} else {
				e.keywords.emplace_back();
			}
			e.kids.push_back(parse_expression());
			if (!at_op(",")) break;
			++i_;
		}
		expect_op(")");
	}

	ExprPtr parse_postfix(ExprPtr e) {
		while (true) {
			if (at_op(".")) {
				const Pos pos = next().pos;
				auto a = node(Expr::Kind::Attr, pos, expect_name());
				a->kids.push_back(std::move(e));
				e = std::move(a);
			} else if (at_op("[")) {
				e = parse_subscript(std::move(e));
			} else if (at_op("(")) {
				auto c = node(Expr::Kind::Call, peek().pos);
				c->kids.push_back(std::move(e));
				c->keywords.emplace_back(); // the callee
				parse_call_args(*c);
				e = std::move(c);
			} else {
				return e;
			}
		}
	}

	// x[i] or x[a:b:c] (each part optional).
	ExprPtr parse_subscript(ExprPtr target) {
		const Pos pos = next().pos;
		std::vector<ExprPtr> parts(1);
		bool slice = false;
		while (!at_op("]")) {
			if (at_op(":")) {
				++i_;
				slice = true;
				parts.emplace_back();
				if (parts.size() > 3) fail(pos, "a slice has at most three parts");
				continue;
			}
			if (parts.back()) fail(peek().pos, "expected ']'" + found());
			parts.back() = parse_expression();
		}
		++i_;
		auto e = node(slice ? Expr::Kind::Slice : Expr::Kind::Index, pos);
		e->kids.push_back(std::move(target));
		if (!slice && !parts[0]) fail(pos, "empty subscript");
		parts.resize(slice ? 3 : 1);
		for (auto& p : parts)
			e->kids.push_back(std::move(p)); // null: omitted
		return e;
	}

	ExprPtr parse_filters(ExprPtr e) {
		while (true) {
			if (at_op("|")) {
				++i_;
				const Pos pos = peek().pos;
				auto f = node(Expr::Kind::Filter, pos, expect_name());
				if (!kFilters.count(f->name)) fail(pos, fmt::format("unknown filter '{}'", f->name));
				f->kids.push_back(std::move(e));
				f->keywords.emplace_back();
				if (at_op("(")) parse_call_args(*f);
				e = std::move(f);
			} else if (at_name("is")) {
				const Pos pos = next().pos;
				const bool negated = at_name("not");
				if (negated) ++i_;
				std::string name;
				if (peek().type == Token::Type::Name || at_op("==") || at_op("!="))
					name = next().text;
				else
					fail(peek().pos, "expected a test name" + found());
				if (!kTests.count(name)) fail(pos, fmt::format("unknown test '{}'", name));
				auto t = node(Expr::Kind::Test, pos, name);
				t->negated = negated;
				t->kids.push_back(std::move(e));
				t->keywords.emplace_back();
				if (at_op("(")) {
					parse_call_args(*t);
				} else if (peek().type == Token::Type::String || peek().type == Token::Type::Int ||
				           peek().type == Token::Type::Float ||
				           (peek().type == Token::Type::Name && peek().text != "and" && peek().text != "or" &&
				            peek().text != "else" && peek().text != "if" && peek().text != "is" &&
				            peek().text != "in" && peek().text != "not")) {
					t->kids.push_back(parse_primary()); // "x is divisibleby 3"
					t->keywords.emplace_back();
				}
				e = std::move(t);
			} else {
				return e;
			}
		}
	}

	ExprPtr parse_primary() {
		const auto& t = peek();
		switch (t.type) {
		case Token::Type::Name: {
			++i_;
			auto lit = [&](Value v) {
				auto e = node(Expr::Kind::Literal, t.pos);
				e->literal = std::move(v);
				return e;
			};
			if (t.text == "true" || t.text == "True") return lit(true);
			if (t.text == "false" || t.text == "False") return lit(false);
			if (t.text == "none" || t.text == "None") return lit(None{});
			return node(Expr::Kind::Name, t.pos, t.text);
		}
		case Token::Type::String: {
			auto e = node(Expr::Kind::Literal, t.pos);
			std::string s;
			while (peek().type == Token::Type::String) // adjacent literals concatenate
				s += next().text;
			e->literal = s;
			return e;
		}
		case Token::Type::Int:
		case Token::Type::Float: {
			++i_;
			auto e = node(Expr::Kind::Literal, t.pos);
			try {
				e->literal = t.type == Token::Type::Int ? Value(static_cast<int64_t>(std::stoll(t.text)))
				                                        : Value(std::stod(t.text));
			} catch (const std::exception&) {
				fail(t.pos, fmt::format("number {} is out of range", t.text));
			}
			return e;
		}
		case Token::Type::Op:
			if (t.text == "(") return parse_parenthesized();
			if (t.text == "[") return parse_sequence("]", Expr::Kind::ListLit);
			if (t.text == "{") return parse_dict();
			break;
		default:
			break;
		}
		fail(t.pos, "expected an expression" + found());
	}
	ExprPtr parse_parenthesized() {
		const Pos pos = next().pos;
		if (at_op(")")) fail(pos, "empty tuples are not supported");
		auto e = parse_expression();
		if (at_op(",")) { // a tuple: a list for our purposes
			auto list = node(Expr::Kind::ListLit, pos);
			list->kids.push_back(std::move(e));
			while (at_op(",")) {
				++i_;
				if (at_op(")")) break;
				list->kids.push_back(parse_expression());
			}
			e = std::move(list);
		}
		expect_op(")");
		return e;
	}
	ExprPtr parse_sequence(const char* closer, Expr::Kind kind) {
		auto e = node(kind, next().pos);
		while (!at_op(closer)) {
			e->kids.push_back(parse_expression());
			if (!at_op(",")) break;
			++i_;
		}
		expect_op(closer);
		return e;
	}
	ExprPtr parse_dict() {
		auto e = node(Expr::Kind::DictLit, next().pos);
		while (!at_op("}")) {
			e->kids.push_back(parse_expression());
			expect_op(":");
			e->kids.push_back(parse_expression());
			if (!at_op(",")) break;
			++i_;
		}
		expect_op("}");
		return e;
	}
};

} // namespace

struct JinjaTemplate::Impl {
	std::string name;
	Body body;
};

namespace {

// --- evaluation ---

enum class Flow { Normal, Break, Continue };

Value get_item(const Value& target, const Value& key, Pos pos);
Value get_attribute(const Value& target, const std::string& name, Pos pos);
Value apply_filter(const std::string& name, const Value& v, Args& args);
bool apply_test(const std::string& name, const Value& v, const Args& args);

class Renderer {
public:
	explicit Renderer(std::string& out) : out_(out) { scopes_.emplace_back(); }

	void define(const std::string& name, Value v) { scopes_.front()[name] = std::move(v); }

	Flow run(const Body& body) {
		for (const auto& s : body)
			if (const auto flow = exec(*s); flow != Flow::Normal) return flow;
		return Flow::Normal;
	}

private:
	std::string& out_;
	std::vector<std::map<std::string, Value>> scopes_;

	Value lookup(const std::string& name) const {
		for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it)
			if (const auto f = it->find(name); f != it->end()) return f->second;
		return Undefined{};
	}

	Flow exec(const Stmt& s) {
		switch (s.kind) {
		case Stmt::Kind::Text:
			out_ += s.text;
			return Flow::Normal;
		case Stmt::Kind::Output:
			out_ += to_string(eval(*s.exprs[0]));
			return Flow::Normal;
		case Stmt::Kind::If:
			for (size_t i = 0; i < s.exprs.size(); ++i)
				if (truthy(eval(*s.exprs[i]))) return run(s.bodies[i]);
			return s.bodies.size() > s.exprs.size() ? run(s.bodies.back()) : Flow::Normal;
		case Stmt::Kind::For:
			return exec_for(s);
		case Stmt::Kind::Set:
			assign(s, eval(*s.exprs[0]));
			return Flow::Normal;
		case Stmt::Kind::SetBlock: {
			std::string captured;
			Renderer inner(captured);
			inner.scopes_ = scopes_;
			inner.run(s.bodies[0]);
			assign(s, captured);
			return Flow::Normal;
		}
		case Stmt::Kind::Break:
			return Flow::Break;
		case Stmt::Kind::Continue:
			return Flow::Continue;
		}
		return Flow::Normal;
	}

	void assign(const Stmt& s, Value v) {
		if (s.attr.empty()) {
			scopes_.back()[s.text] = std::move(v);
			return;
		}
		auto target = lookup(s.text);
		if (!target.dict() || !target.dict()->is_namespace)
			fail(s.pos, fmt::format("cannot set an attribute of '{}', which is not a namespace", s.text));
		target.dict()->set(s.attr, std::move(v));
	}

	void bind_targets(const Stmt& s, const Value& item) {
		auto& scope = scopes_.back();
		if (s.targets.size() == 1) {
			scope[s.targets[0]] = item;
			return;
		}
		const auto parts = iterate(item, s.pos);
		if (parts.size() != s.targets.size())
			fail(s.pos, fmt::format("cannot unpack {} values into {} loop variables", parts.size(), s.targets.size()));
		for (size_t i = 0; i < parts.size(); ++i)
			scope[s.targets[i]] = parts[i];
	}

	Flow exec_for(const Stmt& s) {
		auto items = iterate(eval(*s.exprs[0]), s.exprs[0]->pos);
		if (s.exprs.size() > 1) { // {% for x in xs if cond %}: the loop sees only the kept items
			std::vector<Value> kept;
			for (const auto& item : items) {
				scopes_.emplace_back();
				bind_targets(s, item);
				if (truthy(eval(*s.exprs[1]))) kept.push_back(item);
				scopes_.pop_back();
			}
			items = std::move(kept);
		}
		if (items.empty()) return s.bodies.size() > 1 ? run(s.bodies[1]) : Flow::Normal;
		const int64_t n = static_cast<int64_t>(items.size());
		for (int64_t i = 0; i < n; ++i) {
			scopes_.emplace_back();
			auto loop = make_dict();
			auto& d = *loop.dict();
			d.set("index", i + 1), d.set("index0", i), d.set("revindex", n - i), d.set("revindex0", n - i - 1);
			d.set("first", i == 0), d.set("last", i == n - 1), d.set("length", n);
			d.set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value());
			d.set("nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value());
			scopes_.back()["loop"] = loop;
			bind_targets(s, items[static_cast<size_t>(i)]);
			const auto flow = run(s.bodies[0]);
			scopes_.pop_back();
			if (flow == Flow::Break) break;
		}
		return Flow::Normal;
	}

	Args eval_args(const Expr& e, size_t first) {
		Args args{e.pos, {}, {}};
		for (size_t i = first; i < e.kids.size(); ++i) {
			auto v = eval(*e.kids[i]);
			if (e.keywords[i].empty())
				args.positional.push_back(std::move(v));
			else
				args.keyword.emplace_back(e.keywords[i], std::move(v));
		}
		return args;
	}

	Value eval(const Expr& e) {
		switch (e.kind) {
		case Expr::Kind::Literal:
			return e.literal;
		case Expr::Kind::Name:
			return lookup(e.name);
		case Expr::Kind::Attr:
			return get_attribute(eval(*e.kids[0]), e.name, e.pos);
		case Expr::Kind::Index:
			return get_item(eval(*e.kids[0]), eval(*e.kids[1]), e.pos);
		case Expr::Kind::Slice:
			return slice(e);
		case Expr::Kind::Call: {
			const auto callee = eval(*e.kids[0]);
			auto args = eval_args(e, 1);
			const auto* f = callee.as<std::shared_ptr<Function>>();
			if (!f)
				fail(e.pos,
				     fmt::format("{} is not callable",
				                 e.kids[0]->kind == Expr::Kind::Name ? "'" + e.kids[0]->name + "'" : repr(callee)));
			return (**f)(args);
		}
		case Expr::Kind::Filter: {
			auto value = eval(*e.kids[0]);
			auto args = eval_args(e, 1);
			return apply_filter(e.name, value, args);
		}
		case Expr::Kind::Test: {
			auto value = eval(*e.kids[0]);
			auto args = eval_args(e, 1);
			return apply_test(e.name, value, args) != e.negated;
		}
		case Expr::Kind::Unary:
			return unary(e);
		case Expr::Kind::Binary:
			return arithmetic(e.name, eval(*e.kids[0]), eval(*e.kids[1]), e.pos);
		case Expr::Kind::And: {
			auto left = eval(*e.kids[0]);
			return truthy(left) ? eval(*e.kids[1]) : left;
		}
		case Expr::Kind::Or: {
			auto left = eval(*e.kids[0]);
			return truthy(left) ? left : eval(*e.kids[1]);
		}
		case Expr::Kind::Compare:
			return compare(e);
		case Expr::Kind::Ternary:
			if (truthy(eval(*e.kids[1]))) return eval(*e.kids[0]);
			return e.kids.size() > 2 ? eval(*e.kids[2]) : Value();
		case Expr::Kind::ListLit: {
			std::vector<Value> items;
			for (const auto& k : e.kids)
				items.push_back(eval(*k));
			return make_list(std::move(items));
		}
		case Expr::Kind::DictLit: {
			auto d = make_dict();
			for (size_t i = 0; i + 1 < e.kids.size(); i += 2) {
				const auto key = eval(*e.kids[i]);
				if (!key.str()) fail(e.kids[i]->pos, "dict keys must be strings");
				d.dict()->set(*key.str(), eval(*e.kids[i + 1]));
			}
			return d;
		}
		}
		return Undefined{};
	}

	Value unary(const Expr& e) {
		const auto v = eval(*e.kids[0]);
		if (e.name == "not") return !truthy(v);
		if (!v.number()) fail(e.pos, fmt::format("unary '{}' of {}", e.name, repr(v)));
		if (e.name == "+") return v;
		if (const auto* i = v.as<int64_t>()) return -*i;
		return -v.to_double();
	}

	static Value arithmetic(const std::string& op, const Value& a, const Value& b, Pos pos) {
		if (op == "~") return to_string(a) + to_string(b);
		if (op == "+" && a.str() && b.str()) return *a.str() + *b.str();
		if (op == "+" && a.list() && b.list()) {
			auto items = a.list()->items;
			items.insert(items.end(), b.list()->items.begin(), b.list()->items.end());
			return make_list(std::move(items));
		}
		if (op == "*" && a.str() && b.is<int64_t>()) {
			std::string out;
			for (int64_t i = 0; i < *b.as<int64_t>(); ++i)
				out += *a.str();
			return out;
		}
		if (!a.number() || !b.number())
			fail(pos, fmt::format("unsupported operand types for '{}': {} and {}", op,
			                      a.undefined() ? "undefined" : repr(a), b.undefined() ? "undefined" : repr(b)));
		if (a.is<int64_t>() && b.is<int64_t>() && op != "/") {
			const int64_t x = *a.as<int64_t>(), y = *b.as<int64_t>();
			if ((op == "//" || op == "%") && y == 0) fail(pos, "division by zero");
			if (op == "+") return x + y;
			if (op == "-") return x - y;
			if (op == "*") return x * y;
			if (op == "//") return x / y - ((x % y != 0 && (x < 0) != (y < 0)) ? 1 : 0);
			if (op == "%") return ((x % y) + y) % y;
			if (op == "**" && y >= 0) return static_cast<int64_t>(std::llround(std::pow(x, y)));
		}
		const double x = a.to_double(), y = b.to_double();
		if (op == "+") return x + y;
		if (op == "-") return x - y;
		if (op == "*") return x * y;
		if (op == "**") return std::pow(x, y);
		if (y == 0) fail(pos, "division by zero");
		if (op == "/") return x / y;
		if (op == "//") return std::floor(x / y);
		return x - y * std::floor(x / y);
	}

public:
	static bool contains(const Value& container, const Value& item, Pos pos) {
		if (const auto* s = container.str()) {
			if (!item.str()) fail(pos, "'in <string>' needs a string on the left");
			return s->find(*item.str()) != std::string::npos;
		}
		if (const auto* l = container.list())
			return std::any_of(l->items.begin(), l->items.end(), [&](const Value& x) { return equal(x, item); });
		if (const auto* d = container.dict()) return item.str() && d->find(*item.str());
		if (container.undefined()) return false;
		fail(pos, fmt::format("'in' needs a string, list or dict on the right, not {}", repr(container)));
	}

	static bool less(const Value& a, const Value& b, Pos pos) {
		if (a.number() && b.number()) return a.to_double() < b.to_double();
		if (a.str() && b.str()) return *a.str() < *b.str();
		fail(pos, fmt::format("cannot order {} and {}", repr(a), repr(b)));
	}

private:
	Value compare(const Expr& e) {
		auto left = eval(*e.kids[0]);
		for (size_t i = 0; i < e.keywords.size(); ++i) {
			auto right = eval(*e.kids[i + 1]);
			const auto& op = e.keywords[i];
			bool ok = false;
			if (op == "==")
				ok = equal(left, right);
			else if (op == "!=")
				ok = !equal(left, right);
			else if (op == "<")
				ok = less(left, right, e.pos);
			else if (op == ">")
				ok = less(right, left, e.pos);
			else if (op == "<=")
				ok = !less(right, left, e.pos);
			else if (op == ">=")
				ok = !less(left, right, e.pos);
			else if (op == "in")
				ok = contains(right, left, e.pos);
			else
				ok = !contains(right, left, e.pos);
			if (!ok) return false;
			left = std::move(right);
		}
		return true;
	}

	// Python's slice indices for a sequence of length n.
	std::vector<int64_t> slice_indices(const Expr& e, int64_t n) {
		auto part = [&](size_t k) -> std::optional<int64_t> {
			if (!e.kids[k]) return std::nullopt;
			const auto v = eval(*e.kids[k]);
			if (v.is<None>()) return std::nullopt;
			if (!v.is<int64_t>()) fail(e.kids[k]->pos, "slice indices must be integers");
			return *v.as<int64_t>();
		};
		const auto start = part(1), stop = part(2), step_opt = part(3);
		const int64_t step = step_opt.value_or(1);
		if (step == 0) fail(e.pos, "slice step cannot be zero");
		auto clamp = [&](std::optional<int64_t> v, int64_t fallback) {
			if (!v) return fallback;
			int64_t i = *v < 0 ? *v + n : *v;
			return step > 0 ? std::clamp<int64_t>(i, 0, n) : std::clamp<int64_t>(i, -1, n - 1);
		};
		const int64_t from = clamp(start, step > 0 ? 0 : n - 1), to = clamp(stop, step > 0 ? n : -1);
		std::vector<int64_t> out;
		for (int64_t i = from; step > 0 ? i < to : i > to; i += step)
			out.push_back(i);
		return out;
	}

	Value slice(const Expr& e) {
		const auto target = eval(*e.kids[0]);
		if (const auto* l = target.list()) {
			std::vector<Value> items;
			for (const auto i : slice_indices(e, static_cast<int64_t>(l->items.size())))
				items.push_back(l->items[static_cast<size_t>(i)]);
			return make_list(std::move(items));
		}
		if (const auto* s = target.str()) {
			const auto cps = code_points(*s);
			std::u32string out;
			for (const auto i : slice_indices(e, static_cast<int64_t>(cps.size())))
				out += cps[static_cast<size_t>(i)];
			return utf8(out);
		}
		if (target.undefined()) return Undefined{};
		fail(e.pos, fmt::format("cannot slice {}", repr(target)));
	}
};

int64_t normalized_index(int64_t i, int64_t n) {
	return i < 0 ? i + n : i;
}

Value get_item(const Value& target, const Value& key, Pos pos) {
	if (const auto* d = target.dict()) {
		if (!key.str()) return Undefined{};
		const auto* v = d->find(*key.str());
		return v ? *v : Value();
	}
	if (const auto* k = key.as<int64_t>()) {
		if (const auto* l = target.list()) {
			const auto i = normalized_index(*k, static_cast<int64_t>(l->items.size()));
			return i >= 0 && i < static_cast<int64_t>(l->items.size()) ? l->items[static_cast<size_t>(i)] : Value();
		}
		if (const auto* s = target.str()) {
			const auto cps = code_points(*s);
			const auto i = normalized_index(*k, static_cast<int64_t>(cps.size()));
			return i >= 0 && i < static_cast<int64_t>(cps.size()) ? Value(utf8(cps.substr(static_cast<size_t>(i), 1)))
			                                                      : Value();
		}
	}
	if (key.str()) return get_attribute(target, *key.str(), pos);
	if (target.undefined()) return Undefined{};
	fail(pos, fmt::format("cannot index {} with {}", repr(target), repr(key)));
}

// --- methods, filters and tests ---

std::string strip_chars(const std::string& s, const Value& chars, bool left, bool right) {
	if (const auto* c = chars.str()) {
		const auto cs = code_points(*c), text = code_points(s);
		size_t b = 0, e = text.size();
		while (left && b < e && cs.find(text[b]) != std::u32string::npos)
			++b;
		while (right && e > b && cs.find(text[e - 1]) != std::u32string::npos)
			--e;
		return utf8(text.substr(b, e - b));
	}
	std::string_view v = s; // Python's str.strip(): Unicode whitespace
	if (left) v = trim_start(v);
	if (right) v = trim_end(v);
	return std::string(v);
}

std::string change_case(const std::string& s, bool upper) {
	std::string out = s;
	for (auto& c : out)
		c = static_cast<char>(upper ? std::toupper(static_cast<unsigned char>(c))
		                            : std::tolower(static_cast<unsigned char>(c)));
	return out;
}

std::string title_case(const std::string& s) {
	std::string out = s;
	bool start = true;
	for (auto& c : out) {
		const auto u = static_cast<unsigned char>(c);
		c = static_cast<char>(start ? std::toupper(u) : std::tolower(u));
		start = !std::isalnum(u) && u < 0x80;
	}
	return out;
}

std::string capitalize(const std::string& s) {
	auto out = change_case(s, false);
	if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
	return out;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
	if (from.empty()) return s;
	std::string out;
	size_t start = 0;
	for (size_t at = s.find(from); at != std::string::npos && count != 0; at = s.find(from, start), --count) {
		out.append(s, start, at - start).append(to);
		start = at + from.size();
	}
	return out.append(s, start);
}

Value split(const std::string& s, const Value& sep, int64_t max_split) {
	std::vector<Value> parts;
	if (const auto* p = sep.str(); p && !p->empty()) {
		size_t start = 0;
		for (size_t at = s.find(*p); at != std::string::npos && max_split != 0; at = s.find(*p, start), --max_split) {
			parts.emplace_back(s.substr(start, at - start));
			start = at + p->size();
		}
		parts.emplace_back(s.substr(start));
		return make_list(std::move(parts));
	}
	size_t i = 0; // no separator: runs of whitespace
	while (true) {
		while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i])))
			++i;
		if (i >= s.size()) break;
		if (max_split == 0) {
			parts.emplace_back(std::string(trim_end(s.substr(i))));
			break;
		}
		size_t e = i;
		while (e < s.size() && !std::isspace(static_cast<unsigned char>(s[e])))
			++e;
		parts.emplace_back(s.substr(i, e - i));
		i = e;
		--max_split;
	}
	return make_list(std::move(parts));
}

int64_t int_arg(const Args& args, size_t index, const char* name, int64_t fallback) {
	const auto v = args.get(index, name);
	if (v.undefined()) return fallback;
	if (!v.is<int64_t>()) fail(args.pos, fmt::format("argument '{}' must be an integer", name));
	return *v.as<int64_t>();
}

std::string string_arg(const Args& args, size_t index, const char* name, const char* what) {
	const auto v = args.required(index, name, what);
	if (!v.str()) fail(args.pos, fmt::format("{}: argument '{}' must be a string", what, name));
	return *v.str();
}

bool prefix_test(const std::string& s, const Value& arg, bool starts, Pos pos) {
	auto one = [&](const Value& p) {
		if (!p.str()) fail(pos, "startswith/endswith need a string or a tuple of strings");
		return starts ? s.starts_with(*p.str()) : s.ends_with(*p.str());
	};
	if (const auto* l = arg.list()) return std::any_of(l->items.begin(), l->items.end(), one);
	return one(arg);
}

Value string_method(const std::string& s, const std::string& name, Args& a) {
	if (name == "strip" || name == "lstrip" || name == "rstrip")
		return strip_chars(s, a.get(0, "chars"), name != "rstrip", name != "lstrip");
	if (name == "startswith" || name == "endswith")
		return prefix_test(s, a.required(0, "prefix", name.c_str()), name == "startswith", a.pos);
	if (name == "split") return split(s, a.get(0, "sep"), int_arg(a, 1, "maxsplit", -1));
	if (name == "upper" || name == "lower") return change_case(s, name == "upper");
	if (name == "title") return title_case(s);
	if (name == "capitalize") return capitalize(s);
	if (name == "replace")
		return replace_all(s, string_arg(a, 0, "old", "replace"), string_arg(a, 1, "new", "replace"),
		                   int_arg(a, 2, "count", -1));
	if (name == "find") {
		const auto at = s.find(string_arg(a, 0, "sub", "find"));
		return at == std::string::npos ? int64_t{-1} : static_cast<int64_t>(code_points(s.substr(0, at)).size());
	}
	// join
	std::string out;
	const auto items = iterate(a.required(0, "iterable", "join"), a.pos);
	for (size_t i = 0; i < items.size(); ++i)
		out += (i ? s : "") + to_string(items[i]);
	return out;
}

const std::set<std::string> kStringMethods = {"strip",   "lstrip", "rstrip", "startswith", "endswith",
                                              "split",   "upper",  "lower",  "title",      "capitalize",
                                              "replace", "find",   "join"};

Value get_attribute(const Value& target, const std::string& name, Pos pos) {
	if (const auto* s = target.str()) {
		if (!kStringMethods.count(name)) fail(pos, fmt::format("strings have no attribute '{}'", name));
		const std::string copy = *s;
		return make_function([copy, name](Args& a) { return string_method(copy, name, a); });
	}
	if (const auto* d = target.dict()) {
		const auto keep = std::get<std::shared_ptr<Dict>>(target.v);
		if (!d->is_namespace && (name == "items" || name == "keys" || name == "values"))
			return make_function([keep, name](Args&) {
				std::vector<Value> out;
				for (const auto& [k, v] : keep->items)
					out.push_back(name == "keys" ? Value(k) : name == "values" ? v : make_list({Value(k), v}));
				return make_list(std::move(out));
			});
		if (!d->is_namespace && name == "get")
			return make_function([keep](Args& a) {
				const auto key = a.required(0, "key", "get");
				const auto* v = key.str() ? keep->find(*key.str()) : nullptr;
				return v ? *v : a.get(1, "default", None{});
			});
		const auto* v = d->find(name);
		return v ? *v : Value();
	}
	if (target.list() && name == "append") {
		const auto keep = std::get<std::shared_ptr<List>>(target.v);
		return make_function([keep](Args& a) {
			keep->items.push_back(a.required(0, "item", "append"));
			return Value(None{});
		});
	}
	if (target.undefined() || target.is<None>()) return Undefined{};
	fail(pos, fmt::format("{} has no attribute '{}'", repr(target), name));
}

std::vector<Value> select_by_attribute(const Value& v, Args& args, bool keep_matching) {
	std::vector<Value> out;
	const auto attr = args.required(0, "attribute", "selectattr");
	if (!attr.str()) fail(args.pos, "selectattr/rejectattr: the attribute must be a string");
	Args test_args{
	    args.pos, {args.positional.begin() + std::min<size_t>(2, args.positional.size()), args.positional.end()}, {}};
	for (const auto& item : iterate(v, args.pos)) {
		const auto value = get_item(item, *attr.str(), args.pos);
		bool ok = false;
		if (args.positional.size() < 2) {
			ok = truthy(value);
		} else {
			const auto test_name = args.positional[1].str();
			if (!test_name || !kTests.count(*test_name)) fail(args.pos, "selectattr/rejectattr: unknown test");
			ok = apply_test(*test_name, value, test_args);
		}
		if (ok == keep_matching) out.push_back(item);
	}
	return out;
}

Value map_items(const Value& v, Args& args) {
	std::vector<Value> out;
	const auto attr = args.get(99, "attribute");
	for (const auto& item : iterate(v, args.pos)) {
		if (const auto* a = attr.str()) {
			auto x = get_item(item, *a, args.pos);
			out.push_back(x.undefined() ? args.get(99, "default") : x);
		} else {
			const auto name = args.required(0, "filter", "map");
			if (!name.str() || !kFilters.count(*name.str())) fail(args.pos, "map: unknown filter");
			Args rest{args.pos, std::vector<Value>(args.positional.begin() + 1, args.positional.end()), {}};
			out.push_back(apply_filter(*name.str(), item, rest));
		}
	}
	return make_list(std::move(out));
}

Value first_or_last(const Value& v, bool first, Pos pos) {
	const auto items = iterate(v, pos);
	if (items.empty()) return Undefined{};
	return first ? items.front() : items.back();
}

Value to_int(const Value& v, Args& args) {
	if (const auto* i = v.as<int64_t>()) return *i;
	if (const auto* d = v.as<double>()) return static_cast<int64_t>(*d);
	if (const auto* b = v.as<bool>()) return int64_t{*b};
	if (const auto* s = v.str()) {
		try {
			size_t used = 0;
			const auto i = std::stoll(std::string(trim_start(*s)), &used);
			return static_cast<int64_t>(i);
		} catch (const std::exception&) {
		}
	}
	return args.get(0, "default", int64_t{0});
}

Value to_float(const Value& v, Args& args) {
	if (v.number()) return v.to_double();
	if (const auto* s = v.str()) {
		try {
			return std::stod(*s);
		} catch (const std::exception&) {
		}
	}
	return args.get(0, "default", 0.0);
}

Value apply_filter(const std::string& name, const Value& v, Args& args) {
	const Pos pos = args.pos;
	auto need_string = [&]() -> const std::string& {
		if (!v.str())
			fail(pos, fmt::format("filter '{}' needs a string, not {}", name, v.undefined() ? "undefined" : repr(v)));
		return *v.str();
	};
	if (name == "trim") return strip_chars(need_string(), args.get(0, "chars"), true, true);
	if (name == "length" || name == "count") return length_of(v, pos);
	if (name == "upper" || name == "lower") return change_case(need_string(), name == "upper");
	if (name == "title") return title_case(need_string());
	if (name == "capitalize") return capitalize(need_string());
	if (name == "safe" || name == "e" || name == "escape") return v; // chat templates output plain text
	if (name == "string") return to_string(v);
	if (name == "int") return to_int(v, args);
	if (name == "float") return to_float(v, args);
	if (name == "abs") {
		if (const auto* i = v.as<int64_t>()) return *i < 0 ? -*i : *i;
		if (v.number()) return std::fabs(v.to_double());
		fail(pos, "abs of a non-number");
	}
	if (name == "tojson") {
		std::string out;
		const auto indent = args.get(0, "indent");
		to_json(v, out, indent.is<int64_t>() ? std::optional(*indent.as<int64_t>()) : std::nullopt, 0, pos);
		return out;
	}
	if (name == "default" || name == "d") {
		const bool boolean = truthy(args.get(1, "boolean", false));
		return (v.undefined() || (boolean && !truthy(v))) ? args.get(0, "default_value", "") : v;
	}
	if (name == "first" || name == "last") return first_or_last(v, name == "first", pos);
	if (name == "replace")
		return replace_all(need_string(), string_arg(args, 0, "old", "replace"), string_arg(args, 1, "new", "replace"),
		                   int_arg(args, 2, "count", -1));
	if (name == "join") {
		const auto sep = args.get(0, "d", "");
		std::string out;
		const auto items = iterate(v, pos);
		for (size_t i = 0; i < items.size(); ++i)
			out += (i ? to_string(sep) : "") + to_string(items[i]);
		return out;
	}
	if (name == "list") return make_list(iterate(v, pos));
	if (name == "reverse") {
		if (const auto* s = v.str()) {
			auto cps = code_points(*s);
			std::reverse(cps.begin(), cps.end());
			return utf8(cps);
		}
		auto items = iterate(v, pos);
		std::reverse(items.begin(), items.end());
		return make_list(std::move(items));
	}
	if (name == "selectattr" || name == "rejectattr")
		return make_list(select_by_attribute(v, args, name == "selectattr"));
	if (name == "map") return map_items(v, args);
	if (name == "items") return get_attribute(v, "items", pos).as<std::shared_ptr<Function>>()->get()->operator()(args);
	if (name == "unique") {
		std::vector<Value> out;
		for (const auto& item : iterate(v, pos))
			if (std::none_of(out.begin(), out.end(), [&](const Value& x) { return equal(x, item); }))
				out.push_back(item);
		return make_list(std::move(out));
	}
	if (name == "wordcount") return static_cast<int64_t>(split(need_string(), Value(), -1).list()->items.size());
	// indent(width=4, first=False): lines after the first indented
	const auto width = int_arg(args, 0, "width", 4);
	const bool first = truthy(args.get(1, "first", false));
	const std::string pad(static_cast<size_t>(std::max<int64_t>(width, 0)), ' ');
	std::string out = first ? pad : "";
	for (const char c : need_string()) {
		out += c;
		if (c == '\n') out += pad;
	}
	return out;
}

bool apply_test(const std::string& name, const Value& v, const Args& args) {
	if (name == "defined") return !v.undefined();
	if (name == "undefined") return v.undefined();
	if (name == "none") return v.is<None>();
	if (name == "string") return v.str() != nullptr;
	if (name == "number") return v.number();
	if (name == "integer") return v.is<int64_t>();
	if (name == "float") return v.is<double>();
	if (name == "boolean") return v.is<bool>();
	if (name == "true") return v.is<bool>() && *v.as<bool>();
	if (name == "false") return v.is<bool>() && !*v.as<bool>();
	if (name == "mapping") return v.dict() != nullptr;
	if (name == "iterable") return v.dict() || v.list() || v.str();
	if (name == "sequence") return v.dict() || v.list() || v.str();
	if (name == "callable") return v.is<std::shared_ptr<Function>>();
	if (name == "lower") return v.str() && change_case(*v.str(), false) == *v.str();
	if (name == "upper") return v.str() && change_case(*v.str(), true) == *v.str();
	if (name == "odd" || name == "even" || name == "divisibleby") {
		if (!v.is<int64_t>()) fail(args.pos, fmt::format("test '{}' needs an integer", name));
		const int64_t x = *v.as<int64_t>();
		if (name == "divisibleby") {
			const auto n = int_arg(args, 0, "num", 0);
			if (n == 0) fail(args.pos, "divisibleby 0");
			return x % n == 0;
		}
		return (x % 2 != 0) == (name == "odd");
	}
	const auto other = args.required(0, "other", name.c_str());
	if (name == "eq" || name == "equalto" || name == "==" || name == "sameas") return equal(v, other);
	if (name == "ne" || name == "!=") return !equal(v, other);
	if (name == "lt") return Renderer::less(v, other, args.pos);
	if (name == "gt") return Renderer::less(other, v, args.pos);
	return Renderer::contains(other, v, args.pos); // in
}

std::string strftime_now(Args& args) {
	const auto format = string_arg(args, 0, "format", "strftime_now");
	const std::time_t now = std::time(nullptr);
	std::tm local{};
	localtime_r(&now, &local);
	char buffer[256];
	const size_t n = std::strftime(buffer, sizeof buffer, format.c_str(), &local);
	return std::string(buffer, n);
}

void define_globals(Renderer& r) {
	r.define("raise_exception", make_function([](Args& a) -> Value {
		         fail(a.pos, "raise_exception: " + to_string(a.get(0, "message")));
	         }));
	r.define("namespace", make_function([](Args& a) {
		         auto ns = make_dict();
		         ns.dict()->is_namespace = true;
		         if (!a.positional.empty() && a.positional[0].dict())
			         for (const auto& [k, v] : a.positional[0].dict()->items)
				         ns.dict()->set(k, v);
		         for (const auto& [k, v] : a.keyword)
			         ns.dict()->set(k, v);
		         return ns;
	         }));
	r.define("range", make_function([](Args& a) {
		         int64_t start = 0, stop = 0, step = 1;
		         if (a.positional.size() == 1)
			         stop = int_arg(a, 0, "stop", 0);
		         else
			         start = int_arg(a, 0, "start", 0), stop = int_arg(a, 1, "stop", 0),
			         step = int_arg(a, 2, "step", 1);
		         if (step == 0) fail(a.pos, "range() step cannot be zero");
		         std::vector<Value> out;
		         for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
			         out.emplace_back(i);
		         return make_list(std::move(out));
	         }));
	r.define("strftime_now", make_function([](Args& a) { return Value(strftime_now(a)); }));
}

std::string where(const std::string& name, Pos pos) {
	return fmt::format("chat template {}:{}:{}", name, pos.line, pos.column);
}

} // namespace

JinjaTemplate::JinjaTemplate(const std::string& source, const std::string& name) : impl_(std::make_unique<Impl>()) {
	impl_->name = name;
	try {
		impl_->body = Parser(Lexer(source).run()).parse_template();
	} catch (const TemplateError& e) {
		throw Error(fmt::format("{}: {}", where(name, e.pos), e.message));
	}
}
JinjaTemplate::JinjaTemplate(JinjaTemplate&&) noexcept = default;
JinjaTemplate::~JinjaTemplate() = default;

std::string JinjaTemplate::render(const ordered_json& context) const {
	std::string out;
	Renderer r(out);
	define_globals(r);
	if (!context.is_object()) throw Error(fmt::format("chat template {}: the context must be an object", impl_->name));
	for (const auto& [k, v] : context.items())
		r.define(k, from_json(v));
	try {
		r.run(impl_->body);
	} catch (const TemplateError& e) {
		throw Error(fmt::format("{}: {}", where(impl_->name, e.pos), e.message));
	}
	return out;
}

std::string render_chat(const JinjaTemplate& chat_template, const ordered_json& messages, const std::string& bos_token,
                        const std::string& eos_token, bool add_generation_prompt) {
	ordered_json context = {{"messages", messages},
	                        {"bos_token", bos_token},
	                        {"eos_token", eos_token},
	                        {"add_generation_prompt", add_generation_prompt}};
	return chat_template.render(context);
}

} // namespace weld::text
