// A small Jinja interpreter for chat templates (Debian has no C++ Jinja engine). It renders as
// transformers' apply_chat_template does (Jinja2 with trim_blocks and lstrip_blocks, a single
// trailing newline dropped, loop controls on), for what chat templates use:
//   - {{ expr }}, {% if/elif/else %}, {% for a[, b] in expr [if cond] %}...{% else %}...{% endfor %}
//     (loop.index, index0, revindex, revindex0, first, last, length, previtem, nextitem),
//     {% set x = expr %}, {% set ns.x = expr %}, {% set x %}...{% endset %}, {% break %},
//     {% continue %}, {# comments #}, whitespace control {%- -%} {{- -}}, {% generation %} (ignored);
//   - literals (strings, numbers, true/false/none, lists, dicts), + - * / // % **, ~, comparisons,
//     and/or/not, in / not in, x if c else y, indexing and slicing (messages[1:], s[::-1]),
//     attribute access, calls;
//   - filters: trim, length/count, upper, lower, title, capitalize, tojson, default/d, first, last,
//     replace, join, list, selectattr, rejectattr, map, reverse, string, int, float, abs, items,
//     safe, unique, indent, wordcount; tests: defined, undefined, none, string, number, integer, float,
//     boolean, mapping, iterable, sequence, callable, true, false, odd, even, divisibleby,
//     eq/equalto/==, ne, lt, gt, in, lower, upper, sameas;
//   - string methods strip/lstrip/rstrip/startswith/endswith/split/upper/lower/title/capitalize/
//     replace/find/join, dict methods items/keys/values/get, list append;
//   - globals raise_exception(message), namespace(...), range(...), strftime_now(format).
// Anything else (macros, call blocks, includes, ...) is refused when parsing, with an error
// naming the template, line and column. Errors while rendering (raise_exception included) name
// the template and the position of the expression.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace weld::text {

class JinjaTemplate {
public:
	// Parses source; `name` labels errors ("chat template NAME:LINE:COLUMN: ...").
	JinjaTemplate(const std::string& source, const std::string& name);
	JinjaTemplate(JinjaTemplate&&) noexcept;
	~JinjaTemplate();

	// Renders with the context's keys as variables (JSON objects become dicts in key order).
	std::string render(const nlohmann::ordered_json& context) const;

	struct Impl;

private:
	std::unique_ptr<Impl> impl_;
};

// apply_chat_template's rendering: messages, bos_token, eos_token and add_generation_prompt.
std::string render_chat(const JinjaTemplate& chat_template, const nlohmann::ordered_json& messages,
                        const std::string& bos_token, const std::string& eos_token, bool add_generation_prompt);

} // namespace weld::text
