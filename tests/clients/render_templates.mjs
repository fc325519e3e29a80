// Renders chat templates with @huggingface/jinja (the reference for weld's src/text/jinja.cpp).
// Input: a JSON file {"templates": {name: path}, "cases": [{"template": name, "messages": [...],
// "add_generation_prompt": bool, "bos_token": ..., "eos_token": ...}]}; output: a JSON list with
// each case's text, or {"error": message} where rendering throws.
//   node tests/clients/render_templates.mjs CASES_FILE
import { readFileSync } from "node:fs";
import { Template } from "@huggingface/jinja";

const input = JSON.parse(readFileSync(process.argv[2], "utf8"));
const templates = {};
for (const [name, path] of Object.entries(input.templates)) {
	try {
		templates[name] = new Template(readFileSync(path, "utf8"));
	} catch (e) {
		templates[name] = e; // a template that does not parse fails every case
	}
}
const out = input.cases.map((c) => {
	try {
		const { template, ...context } = c;
		if (templates[template] instanceof Error) throw templates[template];
		return { text: templates[template].render(context) };
	} catch (e) {
		return { error: String(e.message ?? e) };
	}
});
console.log(JSON.stringify(out));
