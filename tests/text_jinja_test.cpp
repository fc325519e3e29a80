// weld's Jinja interpreter (src/text/jinja.h) against the real client, npm's @huggingface/jinja
// (tests/clients/render_templates.mjs): the built-in chat templates (data/chat_templates), the
// Llama-3-Instruct, Qwen2, Mistral-Instruct and Zephyr templates (tests/data/chat_templates) and
// small templates of the other features, rendered on the same message lists, give the same text
// (or both fail).
#include "test_util.h"
#include "text/jinja.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>

namespace weld::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

const fs::path kSource = fs::path(WELD_SOURCE_DIR);

std::string client_missing() {
	if (std::system("node --version >/dev/null 2>&1") != 0) return "node is not installed";
	if (!fs::exists(kSource / "tests/clients/node_modules/@huggingface/jinja"))
		return "tests/clients/node_modules is missing (run scripts/install-clients)";
	return "";
}

ordered_json message(const char* role, const char* content) {
	return ordered_json{{"role", role}, {"content", content}};
}

std::vector<ordered_json> conversations() {
	return {
	    ordered_json::array({message("user", "Hello")}),
	    ordered_json::array({message("system", "You are terse."), message("user", "What is 2+2?"),
	                         message("assistant", "4"), message("user", "And 3+3?")}),
	    ordered_json::array({message("user", "  spaced\tcontent \n"), message("assistant", " héllo 漢字 👍🏽 "),
	                         message("user", "<|eot_id|> [INST] </s>")}),
	    ordered_json::array({message("user", "a"), message("user", "b")}), // not alternating: Mistral refuses
	    ordered_json::array(),
	};
}

// Templates of features the chat templates above do not use, each rendered by both. Booleans and
// lists are not printed directly: Python's Jinja prints True and ['a'], @huggingface/jinja true
// and ["a"] (weld follows Python); nor do they use what the client lacks (chained comparisons,
// test arguments, str.lstrip(chars)).
const std::vector<std::pair<std::string, std::string>> kFeatureTemplates = {
    {"slices", "{{ messages[1:] | length }}|{{ messages[-1]['role'] }}|{{ 'abcdef'[1:4] }}|{{ 'abc'[::-1] }}|"
               "{{ messages[::2] | map(attribute='role') | join(',') }}|{{ messages[:-1] | length }}"},
    {"namespace", "{% set ns = namespace(n=0, found='no') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                  "{% if m.role == 'assistant' %}{% set ns.found = 'yes' %}{% endif %}{% endfor %}{{ ns.n }} "
                  "{{ ns.found }}"},
    {"loop", "{% for m in messages %}{{ loop.index }}/{{ loop.length }}{{ '!' if loop.last else ',' }}"
             "{{ loop.revindex0 }}{% if loop.first %}F{% endif %}{% else %}empty{% endfor %}"},
    {"filters", "{{ messages | length }} {{ 'Hi There' | upper }} {{ 'Hi There' | lower }} {{ '  x  ' | trim }}"
                " {{ undefined_thing | default('dflt') }} {{ messages | tojson }} {{ 'a-b-c' | replace('-', '+') }}"
                " {{ [3, 1, 2] | first }}{{ [3, 1, 2] | last }} {{ ['x', 'y'] | join('; ') }}"
                " {{ {'k': 'v', 'n': 1, 'l': [true, none]} | tojson }} {{ 'hello world' | title }}"
                " {{ 'héllo' | length }} {{ 'abc' | capitalize }}"},
    {"tests_and_ops", "{{ 'T' if x is defined else 'F' }}{{ 'T' if messages is string else 'F' }}"
                      "{{ 'T' if 'a' is string else 'F' }}{{ 'T' if none is none else 'F' }}"
                      "{{ 'T' if 7 is odd else 'F' }}{{ 'T' if x is not defined else 'F' }} {{ 'ab' ~ 3 ~ 'c' }}"
                      " {{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 5 }} {{ 'T' if 'b' in 'abc' else 'F' }}"
                      "{{ 'T' if 'z' not in ['a'] else 'F' }}{{ 'T' if not 1 < 2 else 'F' }}"
                      "{{ 'T' if 1 == 1.0 else 'F' }} {{ (true and 'x') or 'y' }} {{ 'a' if false else 'b' }}"
                      " {{ 3.5 }} {{ 10 / 4 }} {{ -3 + 1 }} {{ 'ab' + 'cd' }}"},
    {"methods", "{% for m in messages %}[{{ m['content'].strip() }}|{{ 'T' if m.content.startswith('H') else 'F' }}"
                "|{{ 'T' if m.content.endswith(('?', 'o')) else 'F' }}|{{ m.role.upper() }}"
                "|{{ m.content.split(' ') | length }}|{{ m.content.replace('l', 'L') }}|{{ m.content.rstrip() }}]"
                "{% endfor %}{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"
                "{{ {'a': 1}.get('b', 'none') }}"},
    {"whitespace",
     "A  \n  {%- if true %}\n    B {{- ' C ' -}} D\n  {% endif %}\n{# note #}\n  E {{ 'F' }}\n"
     "{%- for i in range(3) %}\n  {{ i }}\n{%- endfor %}\n{% set s %}in{{ 'side' }}{% endset %}{{ s }}\n"},
    {"control", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}{% break %}"
                "{% endif %}{{ i }}{% endfor %}|{% for m in messages if m.role == 'user' %}{{ loop.index }}"
                "{% endfor %}|{{ messages | selectattr('role', 'equalto', 'user') | list | length }}"
                "|{{ messages | rejectattr('role', 'equalto', 'user') | map(attribute='content') | join('+') }}"},
};

TEST(TextJinja, ChatTemplatesMatchHuggingFaceJinja) {
	if (const auto why = client_missing(); !why.empty()) GTEST_SKIP() << "real client unavailable: " << why;
	TempDir dir;
	std::map<std::string, fs::path> templates;
	for (const auto& name : {"alpaca", "chatml", "exaone", "llama3", "mistral"})
		templates[name] = kSource / "data/chat_templates" / (std::string(name) + ".jinja");
	for (const auto& name : {"llama3_instruct", "qwen2", "mistral_instruct", "zephyr"})
		templates[name] = kSource / "tests/data/chat_templates" / (std::string(name) + ".jinja");
	for (const auto& [name, text] : kFeatureTemplates) {
		templates[name] = dir / (name + ".jinja");
		write_file(templates[name], text);
	}
	ordered_json input = {{"templates", ordered_json::object()}, {"cases", ordered_json::array()}};
	for (const auto& [name, path] : templates)
		input["templates"][name] = path.string();
	for (const auto& [name, path] : templates)
		for (const auto& messages : conversations())
			for (const bool generation : {false, true})
				input["cases"].push_back({{"template", name},
				                          {"messages", messages},
				                          {"add_generation_prompt", generation},
				                          {"bos_token", "<s>"},
				                          {"eos_token", "</s>"}});
	write_file(dir / "cases.json", input.dump());
	const auto expected = ordered_json::parse(test::command_output("cd '" + (kSource / "tests/clients").string() +
	                                                               "' && node render_templates.mjs '" +
	                                                               (dir / "cases.json").string() + "'"));
	ASSERT_EQ(expected.size(), input["cases"].size());
	size_t rendered = 0;
	for (size_t i = 0; i < expected.size(); ++i) {
		const auto& c = input["cases"][i];
		const auto name = c["template"].get<std::string>();
		const text::JinjaTemplate t(read_file(templates.at(name)), name);
		std::string text, error;
		try {
			text = text::render_chat(t, c["messages"], "<s>", "</s>", c["add_generation_prompt"].get<bool>());
		} catch (const Error& e) {
			error = e.what();
		}
		const auto context = name + " on " + c["messages"].dump();
		if (expected[i].contains("error")) {
			EXPECT_FALSE(error.empty()) << context << ": the client fails (" << expected[i]["error"] << "), weld gives "
			                            << text;
			continue;
		}
		ASSERT_TRUE(error.empty()) << context << ": " << error;
		EXPECT_EQ(text, expected[i]["text"].get<std::string>()) << context;
		++rendered;
	}
	EXPECT_GT(rendered, 150u);
}

// raise_exception's message and the template's name and position reach the error.
TEST(TextJinja, RaiseExceptionNamesTemplateAndPosition) {
	const text::JinjaTemplate t(read_file(kSource / "tests/data/chat_templates/mistral_instruct.jinja"), "mistral");
	const auto system_only = ordered_json::array({message("system", "s")});
	const auto error = error_of([&] { text::render_chat(t, system_only, "<s>", "</s>", true); });
	EXPECT_NE(error.find("chat template mistral:1:"), std::string::npos) << error;
	EXPECT_NE(error.find("raise_exception: Conversation roles must alternate"), std::string::npos) << error;
}

TEST(TextJinja, BadSyntaxIsAnErrorWithPosition) {
	const auto parse = [](const std::string& text) { return error_of([&] { text::JinjaTemplate(text, "bad"); }); };
	EXPECT_EQ(parse("ab\n{% if x %}y"), "chat template bad:2:12: missing '{% endif %}'");
	EXPECT_EQ(parse("{{ x | frobnicate }}"), "chat template bad:1:8: unknown filter 'frobnicate'");
	EXPECT_EQ(parse("{% macro m() %}{% endmacro %}"),
	          "chat template bad:1:4: unsupported tag 'macro' (weld's Jinja runs if, for, set, break, continue)");
	EXPECT_EQ(parse("{{ 'abc }}"), "chat template bad:1:4: unclosed string literal");
	EXPECT_EQ(parse("{{ 1 + }}"), "chat template bad:1:8: expected an expression, found '}}'");
	EXPECT_EQ(parse("{% for x messages %}{% endfor %}"), "chat template bad:1:10: expected 'in', found 'messages'");
	EXPECT_EQ(parse("{{ x "), "chat template bad:1:6: unclosed '{{'");
}

} // namespace
} // namespace weld::test
