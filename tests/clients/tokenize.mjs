// Tokenizes every line of a text file with @huggingface/tokenizers (the reference for weld's
// src/text/tokenizer.cpp) and prints one JSON object per line: the ids with special tokens
// added, and those ids decoded (special tokens kept).
//   node tests/clients/tokenize.mjs TOKENIZER_DIR LINES_FILE
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";

const [dir, linesFile] = process.argv.slice(2);
const read = (name) => JSON.parse(readFileSync(join(dir, name), "utf8"));
const tokenizer = new Tokenizer(read("tokenizer.json"), read("tokenizer_config.json"));
const lines = readFileSync(linesFile, "utf8").split("\n");
if (lines.at(-1) === "") lines.pop();
for (const line of lines) {
	const ids = tokenizer.encode(line).ids;
	const plain = tokenizer.encode(line, { add_special_tokens: false }).ids;
	const decoded = ids.length > 0 ? tokenizer.decode(ids) : "";
	console.log(JSON.stringify({ ids, plain, decoded }));
}
