// weld's tokenizer (src/text/tokenizer.h) against the real client, npm's @huggingface/tokenizers
// (tests/clients/tokenize.mjs), on the two small tokenizers of tests/data/tokenizers (written by
// make_tokenizers.py): every line of lines.txt must give the same ids and the same decoded text.
#include "test_util.h"
#include "text/tokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>

namespace weld::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kData = fs::path(WELD_SOURCE_DIR) / "tests/data/tokenizers";
const fs::path kClients = fs::path(WELD_SOURCE_DIR) / "tests/clients";

// Why the node client cannot run here, or "" when it can.
std::string client_missing() {
	if (std::system("node --version >/dev/null 2>&1") != 0) return "node is not installed";
	if (!fs::exists(kClients / "node_modules/@huggingface/tokenizers") ||
	    !fs::exists(kClients / "node_modules/@huggingface/jinja"))
		return "tests/clients/node_modules is missing (run scripts/install-clients)";
	return "";
}

std::vector<std::string> text_lines(const fs::path& file) {
	std::ifstream in(file, std::ios::binary);
	std::vector<std::string> lines;
	for (std::string line; std::getline(in, line);)
		lines.push_back(line);
	return lines;
}

void compare_with_client(const std::string& name) {
	if (const auto why = client_missing(); !why.empty()) GTEST_SKIP() << "real client unavailable: " << why;
	const auto dir = kData / name, lines_file = kData / "lines.txt";
	const auto out = test::command_output("cd '" + kClients.string() + "' && node tokenize.mjs '" + dir.string() +
	                                      "' '" + lines_file.string() + "'");
	const auto tokenizer = text::Tokenizer::load(dir);
	const auto lines = text_lines(lines_file);
	std::istringstream records(out);
	size_t n = 0;
	for (std::string record; std::getline(records, record); ++n) {
		ASSERT_LT(n, lines.size());
		const auto expected = json::parse(record);
		const auto& line = lines[n];
		const auto ids = tokenizer.encode(line);
		ASSERT_EQ(ids, expected["ids"].get<std::vector<int64_t>>()) << name << " line " << n + 1 << ": " << line;
		ASSERT_EQ(tokenizer.encode(line, false), expected["plain"].get<std::vector<int64_t>>())
		    << name << " line " << n + 1;
		ASSERT_EQ(tokenizer.decode(ids), expected["decoded"].get<std::string>()) << name << " line " << n + 1;
	}
	EXPECT_EQ(n, lines.size());
	EXPECT_GE(n, 300u);
}

TEST(TextTokenizer, Llama3ByteLevelMatchesHuggingFaceTokenizers) {
	compare_with_client("llama3");
}

TEST(TextTokenizer, Llama2SentencePieceMatchesHuggingFaceTokenizers) {
	compare_with_client("llama2");
}

// Hand-checked facts that hold whatever the merges: bytes outside the vocabulary fall back to
// <0xXX> tokens, BOS comes from tokenizer_config.json, decoding drops the added prefix space.
TEST(TextTokenizer, ByteFallbackAndBos) {
	const auto t = text::Tokenizer::load(kData / "llama2");
	ASSERT_TRUE(t.bos_id());
	EXPECT_EQ(*t.bos_id(), 1);
	EXPECT_EQ(*t.eos_id(), 2);
	const auto ids = t.encode("\xF0\x9F\xA6\x9C"); // 🦜: four bytes, rare enough to be unknown
	const std::vector<int64_t> expected{1, 3 + 0xF0, 3 + 0x9F, 3 + 0xA6, 3 + 0x9C};
	// "▁" may or may not be a token of its own; the last four ids are the bytes either way.
	ASSERT_GE(ids.size(), 5u);
	EXPECT_EQ(std::vector<int64_t>(ids.end() - 4, ids.end()),
	          std::vector<int64_t>(expected.begin() + 1, expected.end()));
	EXPECT_EQ(ids.front(), 1);
	EXPECT_EQ(t.decode(ids, true), "\xF0\x9F\xA6\x9C");
}

TEST(TextTokenizer, ByteLevelRoundTrips) {
	const auto t = text::Tokenizer::load(kData / "llama3");
	for (const std::string s : {"plain text", "  two\t\ttabs\n", "ünïcödé 漢字 🇫🇷", "<|eot_id|>x"})
		EXPECT_EQ(t.decode(t.encode(s, false)), s);
	EXPECT_EQ(t.encode("<|eot_id|>", false), std::vector<int64_t>{*t.token_to_id("<|eot_id|>")});
}

// --- bad input: one clear error naming the file and what is wrong ---

fs::path write_tokenizer(const TempDir& dir, const std::string& text) {
	write_file(dir / "tokenizer.json", text);
	return dir.path();
}

json llama3_json() {
	return json::parse(read_file(kData / "llama3/tokenizer.json"));
}

TEST(TextTokenizer, NotJsonIsAnError) {
	TempDir dir;
	const auto message = error_of([&] { text::Tokenizer::load(write_tokenizer(dir, "{\"model\": [1, 2")); });
	EXPECT_NE(message.find("tokenizer.json: not JSON"), std::string::npos) << message;
	EXPECT_NE(error_of([&] { text::Tokenizer::load(write_tokenizer(dir, "[1, 2]")); }).find("expected a JSON object"),
	          std::string::npos);
	EXPECT_NE(
	    error_of([&] { text::Tokenizer::load(write_tokenizer(dir, "{\"version\": \"1.0\"}")); }).find("no \"model\""),
	    std::string::npos);
}

TEST(TextTokenizer, WrongModelTypeIsAnError) {
	TempDir dir;
	auto j = llama3_json();
	j["model"] = {{"type", "WordPiece"}, {"vocab", {{"[UNK]", 0}}}, {"unk_token", "[UNK]"}};
	const auto message = error_of([&] { text::Tokenizer::load(write_tokenizer(dir, j.dump())); });
	EXPECT_NE(message.find("tokenizer.json"), std::string::npos) << message;
	EXPECT_NE(message.find("model type 'WordPiece' is not supported"), std::string::npos) << message;
	j = llama3_json();
	j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
	const auto pre = error_of([&] { text::Tokenizer::load(write_tokenizer(dir, j.dump())); });
	EXPECT_NE(pre.find("pre_tokenizer: pre-tokenizer 'BertPreTokenizer' is not supported"), std::string::npos) << pre;
}

TEST(TextTokenizer, MergeOfUnknownTokensIsAnError) {
	TempDir dir;
	auto j = llama3_json();
	j["model"]["merges"].push_back(json::array({"zzzq", "qqqz"}));
	const auto message = error_of([&] { text::Tokenizer::load(write_tokenizer(dir, j.dump())); });
	EXPECT_NE(message.find("tokenizer.json: merges[3000] names token 'zzzq', which is not in the vocabulary"),
	          std::string::npos)
	    << message;
}

TEST(TextTokenizer, BadRegexIsAnError) {
	TempDir dir;
	auto j = llama3_json();
	j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{L}+";
	const auto message = error_of([&] { text::Tokenizer::load(write_tokenizer(dir, j.dump())); });
	EXPECT_NE(message.find("does not compile"), std::string::npos) << message;
}

} // namespace
} // namespace weld::test
