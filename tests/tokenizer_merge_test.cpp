// mergekit's tokenizer settings end to end: tiny models whose hand-written tokenizer.json files
// differ in vocabulary, merged with tokenizer_source / the tokenizer: block / chat_template; the
// merged embedding rows are checked token by token (by token string) against values written
// out by hand from each model's own rows.
#include "exec/merge.h"
#include "io/chat_templates.h"
#include "test_util.h"
#include "util/error.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace weld {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kHidden = 8;

// A tokenizer: regular tokens (ids in order) then added tokens (special when starting with "<|").
struct Vocab {
	std::vector<std::string> regular;
	std::vector<std::string> added;
};

class TokenizerMergeTest : public ::testing::Test {
protected:
	// Writes a model folder: a tiny Llama with `rows` embedding and lm_head rows, and Vocab's
	// tokenizer.json (a BPE model, or Unigram: model.vocab a list of [piece, score]).
	void make_model(const std::string& name, const Vocab& vocab, int rows, uint64_t seed,
	                const std::string& type = "BPE") {
		TinyLlamaSpec spec;
		spec.layers = 1;
		spec.hidden = kHidden;
		spec.intermediate = 16;
		spec.vocab = rows;
		const auto tensors = make_tiny_llama(spec, seed);
		write_tiny_llama(dir_ / name, spec, tensors);
		weights_[name] = test::as_map(tensors);
		json model = {{"type", type}, {"vocab", type == "Unigram" ? json::array() : json::object()}};
		if (type == "BPE") model["merges"] = json::array();
		json tokenizer = {{"version", "1.0"}, {"model", model}, {"added_tokens", json::array()}};
		auto& ids = ids_[name];
		ids.clear();
		for (const auto& token : vocab.regular) {
			if (type == "Unigram")
				tokenizer["model"]["vocab"].push_back({token, -1.5});
			else
				tokenizer["model"]["vocab"][token] = ids.size();
			ids[token] = static_cast<int64_t>(ids.size());
		}
		for (const auto& token : vocab.added) {
			const bool special = token.rfind("<|", 0) == 0 || token == "<s>";
			tokenizer["added_tokens"].push_back({{"id", ids.size()},
			                                     {"content", token},
			                                     {"single_word", false},
			                                     {"lstrip", false},
			                                     {"rstrip", false},
			                                     {"normalized", !special},
			                                     {"special", special}});
			ids[token] = static_cast<int64_t>(ids.size());
		}
		test::write_file(dir_ / name / "tokenizer.json", tokenizer.dump(1));
	}

	// The family most tests use: base (a-f), chat (a-d, x, y, w; ChatML tokens), other (its own
	// order of b, a, c, e; z, w).
	void make_family() {
		make_model("base", {{"a", "b", "c", "d", "e", "f"}, {"<s>"}}, 7, 1);
		make_model("chat", {{"a", "b", "c", "d", "x", "y", "w"}, {"<s>", "<|im_start|>", "<|im_end|>"}}, 10, 2);
		make_model("other", {{"b", "a", "c", "e", "z", "w"}, {"<s>"}}, 7, 3);
	}

	// Runs the recipe into dir_/out (or `out`); model references are relative to dir_.
	MergeSummary merge(const std::string& recipe, const std::string& out = "out", unsigned threads = 2) {
		test::write_file(dir_ / "recipe.yml", recipe);
		MergeOptions options;
		options.recipe_path = dir_ / "recipe.yml";
		options.out_dir = dir_ / out;
		options.force = true;
		options.exec.threads = threads;
		const test::WorkingDir in_dir(dir_.path());
		return run_merge(options);
	}

	std::string merge_error(const std::string& recipe) {
		return test::error_of([&] { merge(recipe, "failed"); });
	}

	// Row `row` of a model's tensor as stored (float32 models: exactly the generated values).
	std::vector<double> row(const std::string& model, const std::string& tensor, int64_t index) {
		const auto& values = weights_.at(model).at(tensor);
		return {values.begin() + index * kHidden, values.begin() + (index + 1) * kHidden};
	}
	// A model's own row of a token.
	std::vector<double> own(const std::string& model, const std::string& token,
	                        const std::string& tensor = "model.embed_tokens.weight") {
		return row(model, tensor, ids_.at(model).at(token));
	}

	static std::vector<double> combine(const std::vector<std::pair<double, std::vector<double>>>& terms) {
		std::vector<double> out(kHidden, 0.0);
		for (const auto& [weight, values] : terms)
			for (int c = 0; c < kHidden; c++)
				out[c] += weight * values[c];
		return out;
	}

	// The output's id of each token, from its tokenizer.json (model vocab and added tokens).
	std::map<std::string, int64_t> output_ids(const std::string& out = "out") {
		const auto tokenizer = json::parse(test::read_file(dir_ / out / "tokenizer.json"));
		std::map<std::string, int64_t> ids;
		for (const auto& [token, id] : tokenizer["model"]["vocab"].items())
			ids[token] = id.get<int64_t>();
		for (const auto& entry : tokenizer["added_tokens"])
			ids[entry["content"].get<std::string>()] = entry["id"].get<int64_t>();
		return ids;
	}

	void expect_row(const test::Tensors& out, const std::string& tensor, int64_t index,
	                const std::vector<double>& expected, const std::string& what) {
		const auto& values = out.at(tensor);
		ASSERT_LE(static_cast<size_t>((index + 1) * kHidden), values.size()) << what;
		for (int c = 0; c < kHidden; c++)
			EXPECT_NEAR(values[index * kHidden + c], expected[c], 1e-5) << what << " column " << c;
	}
	void expect_token(const test::Tensors& out, const std::string& token, const std::vector<double>& expected,
	                  const std::string& tensor = "model.embed_tokens.weight") {
		const auto ids = output_ids();
		ASSERT_TRUE(ids.contains(token)) << token;
		expect_row(out, tensor, ids.at(token), expected, "token " + token + " of " + tensor);
	}

	json read_json(const fs::path& path) { return json::parse(test::read_file(path)); }

	test::TempDir dir_;
	std::map<std::string, test::Tensors> weights_;
	std::map<std::string, std::map<std::string, int64_t>> ids_;
};

const std::string kLinear = "merge_method: linear\nbase_model: base\nmodels:\n"
                            "  - model: base\n    parameters: {weight: 1}\n"
                            "  - model: chat\n    parameters: {weight: 2}\n"
                            "  - model: other\n    parameters: {weight: 3}\n";

// Union: the base's tokens keep their ids; x, y, w, z (regular tokens of the others, in model
// order) then the ChatML tokens (added tokens) follow. Each row is the weighted mean (1:2:3) of
// the models' rows, a model lacking the token giving mergekit's fallback.
TEST_F(TokenizerMergeTest, UnionVocabularyAndRowsByTokenString) {
	make_family();
	merge(kLinear + "tokenizer_source: union\n");
	const auto ids = output_ids();
	const std::map<std::string, int64_t> expected_ids = {{"a", 0},          {"b", 1}, {"c", 2},   {"d", 3},
	                                                     {"e", 4},          {"f", 5}, {"<s>", 6}, {"x", 7},
	                                                     {"y", 8},          {"w", 9}, {"z", 10},  {"<|im_start|>", 11},
	                                                     {"<|im_end|>", 12}};
	EXPECT_EQ(ids, expected_ids);
	const auto out = test::read_model(dir_ / "out");
	EXPECT_EQ(out.at("model.embed_tokens.weight").size(), 13u * kHidden);
	EXPECT_EQ(out.at("lm_head.weight").size(), 13u * kHidden);
	EXPECT_EQ(read_json(dir_ / "out" / "config.json")["vocab_size"], 13);

	// Everyone has a and b, at different ids in other.
	for (const std::string token : {"a", "b", "<s>"})
		expect_token(
		    out, token,
		    combine({{1. / 6, own("base", token)}, {2. / 6, own("chat", token)}, {3. / 6, own("other", token)}}));
	// e: chat lacks it and takes the base's row.
	expect_token(out, "e", combine({{3. / 6, own("base", "e")}, {3. / 6, own("other", "e")}}));
	// d: other lacks it and takes the base's.
	expect_token(out, "d", combine({{4. / 6, own("base", "d")}, {2. / 6, own("chat", "d")}}));
	// Tokens of one model only: everyone takes that model's row.
	expect_token(out, "f", own("base", "f"));
	expect_token(out, "x", own("chat", "x"));
	expect_token(out, "z", own("other", "z"));
	expect_token(out, "<|im_start|>", own("chat", "<|im_start|>"));
	// w: chat and other have it, not the base: the base takes their mean.
	const auto w_mean = combine({{0.5, own("chat", "w")}, {0.5, own("other", "w")}});
	expect_token(out, "w", combine({{1. / 6, w_mean}, {2. / 6, own("chat", "w")}, {3. / 6, own("other", "w")}}));
	// lm_head follows the same vocabulary.
	expect_token(out, "b",
	             combine({{1. / 6, own("base", "b", "lm_head.weight")},
	                      {2. / 6, own("chat", "b", "lm_head.weight")},
	                      {3. / 6, own("other", "b", "lm_head.weight")}}),
	             "lm_head.weight");
	expect_token(out, "x", own("chat", "x", "lm_head.weight"), "lm_head.weight");
	// The other tensors merge as usual.
	const auto& norm = out.at("model.norm.weight");
	EXPECT_NEAR(norm[3],
	            (weights_["base"]["model.norm.weight"][3] + 2 * weights_["chat"]["model.norm.weight"][3] +
	             3 * weights_["other"]["model.norm.weight"][3]) /
	                6,
	            1e-6);

	// Written tokenizer: appended tokens as added tokens (regular ones normal, ChatML ones special).
	const auto tokenizer = read_json(dir_ / "out" / "tokenizer.json");
	ASSERT_EQ(tokenizer["added_tokens"].size(), 7u); // <s> and the six new ones
	EXPECT_EQ(tokenizer["added_tokens"][1]["content"], "x");
	EXPECT_EQ(tokenizer["added_tokens"][1]["special"], false);
	EXPECT_EQ(tokenizer["added_tokens"][1]["normalized"], true);
	EXPECT_EQ(tokenizer["added_tokens"][5]["content"], "<|im_start|>");
	EXPECT_EQ(tokenizer["added_tokens"][5]["special"], true);
	EXPECT_EQ(tokenizer["model"]["vocab"].size(), 6u); // the base's model vocabulary, unchanged
	const auto config = read_json(dir_ / "out" / "tokenizer_config.json");
	EXPECT_EQ(config["added_tokens_decoder"]["12"]["content"], "<|im_end|>");
	EXPECT_EQ(config["added_tokens_decoder"]["12"]["special"], true);
	EXPECT_EQ(config["tokenizer_class"], "LlamaTokenizer"); // the base's other settings kept
	EXPECT_TRUE(fs::exists(dir_ / "out" / "special_tokens_map.json"));

	// Same bytes on one thread.
	merge(kLinear + "tokenizer_source: union\n", "out1", 1);
	EXPECT_EQ(test::read_file(dir_ / "out" / "model.safetensors"),
	          test::read_file(dir_ / "out1" / "model.safetensors"));
}

// base: the base's vocabulary and files; the others' rows are permuted into it by token.
TEST_F(TokenizerMergeTest, BaseSourcePermutesRowsIntoTheBaseVocabulary) {
	make_family();
	merge(kLinear + "tokenizer_source: base\n");
	EXPECT_EQ(test::read_file(dir_ / "out" / "tokenizer.json"), test::read_file(dir_ / "base" / "tokenizer.json"));
	const auto out = test::read_model(dir_ / "out");
	EXPECT_EQ(out.at("model.embed_tokens.weight").size(), 7u * kHidden);
	EXPECT_EQ(read_json(dir_ / "out" / "config.json")["vocab_size"], 7);
	expect_token(out, "a",
	             combine({{1. / 6, own("base", "a")}, {2. / 6, own("chat", "a")}, {3. / 6, own("other", "a")}}));
	expect_token(out, "e", combine({{3. / 6, own("base", "e")}, {3. / 6, own("other", "e")}}));
	expect_token(out, "f", own("base", "f"));
}

// A model as the source: its vocabulary; the models lacking its tokens take its rows.
TEST_F(TokenizerMergeTest, ModelSourceUsesThatModelsVocabulary) {
	make_family();
	merge(kLinear + "tokenizer:\n  source: chat\n");
	EXPECT_EQ(test::read_file(dir_ / "out" / "tokenizer.json"), test::read_file(dir_ / "chat" / "tokenizer.json"));
	EXPECT_EQ(output_ids(), ids_["chat"]);
	const auto out = test::read_model(dir_ / "out");
	EXPECT_EQ(out.at("model.embed_tokens.weight").size(), 10u * kHidden);
	expect_token(out, "<|im_end|>", own("chat", "<|im_end|>"));
	expect_token(out, "d", combine({{4. / 6, own("base", "d")}, {2. / 6, own("chat", "d")}}));
	expect_token(out, "c",
	             combine({{1. / 6, own("base", "c")}, {2. / 6, own("chat", "c")}, {3. / 6, own("other", "c")}}));
}

// tokens: a zero source, a forced model source, model_token by token and by id, and a new token.
TEST_F(TokenizerMergeTest, TokenOverridesAndForce) {
	make_family();
	const auto summary = merge(kLinear + R"(tokenizer:
  source: union
  tokens:
    <|im_start|>:
      source: {kind: zero}
    e:
      source: other
      force: true
    y:
      source: {kind: model_token, model: other, token: z}
    <new>:
      source: {kind: model_token, model: base, token_id: 2}
    x:
      source: {kind: zero}
      force: true
)");
	ASSERT_EQ(summary.warnings.size(), 1u);
	EXPECT_EQ(summary.warnings[0], "token(s) in none of the models: '<new>'; their rows are zeros unless a tokens: "
	                               "entry gives a source");
	const auto out = test::read_model(dir_ / "out");
	const auto zero = std::vector<double>(kHidden, 0.0);
	// Only chat has it; the others get zeros.
	expect_token(out, "<|im_start|>", combine({{2. / 6, own("chat", "<|im_start|>")}}));
	// Forced: every model, other included, takes other's row.
	expect_token(out, "e", own("other", "e"));
	// Chat keeps its own y; base and other take other's z.
	expect_token(out, "y", combine({{4. / 6, own("other", "z")}, {2. / 6, own("chat", "y")}}));
	// A token no model has, added after the union, from the base's row 2.
	EXPECT_EQ(output_ids().at("<new>"), 13);
	expect_token(out, "<new>", row("base", "model.embed_tokens.weight", 2));
	expect_token(out, "x", zero);
	// Untouched tokens as without overrides.
	expect_token(out, "f", own("base", "f"));
}

// pad_to_multiple_of: rows up to a multiple; each model's padding rows are its mean over the
// vocabulary rows, so a linear merge's padding rows are the mean of its own vocabulary rows.
TEST_F(TokenizerMergeTest, PadToMultipleOf) {
	make_family();
	merge(kLinear + "tokenizer:\n  source: union\n  pad_to_multiple_of: 8\n");
	const auto out = test::read_model(dir_ / "out");
	const auto& embed = out.at("model.embed_tokens.weight");
	ASSERT_EQ(embed.size(), 16u * kHidden);
	EXPECT_EQ(read_json(dir_ / "out" / "config.json")["vocab_size"], 16);
	std::vector<double> mean(kHidden, 0.0);
	for (int r = 0; r < 13; r++)
		for (int c = 0; c < kHidden; c++)
			mean[c] += embed[r * kHidden + c] / 13.0;
	for (int r = 13; r < 16; r++)
		expect_row(out, "model.embed_tokens.weight", r, mean, "padding row " + std::to_string(r));
}

// Embedding rows beyond the tokenizer's ids are real rows: kept under base (in place) and under
// union (after the merged vocabulary); a model without them gives its mean row there.
TEST_F(TokenizerMergeTest, PaddedVocabularyRowsAreKept) {
	make_model("base", {{"a", "b", "c", "d", "e", "f"}, {"<s>"}}, 10, 1); // rows 7-9 unnamed
	make_model("tuned", {{"a", "b", "c", "d", "e", "f"}, {"<s>"}}, 10, 4);
	make_model("chat", {{"a", "b", "c", "d", "x", "y", "w"}, {"<s>", "<|im_start|>", "<|im_end|>"}}, 10, 2);
	const std::string E = "model.embed_tokens.weight";

	merge("merge_method: linear\nbase_model: base\ntokenizer_source: base\nmodels:\n"
	      "  - model: base\n    parameters: {weight: 1}\n  - model: tuned\n    parameters: {weight: 3}\n");
	auto out = test::read_model(dir_ / "out");
	ASSERT_EQ(out.at(E).size(), 10u * kHidden);
	EXPECT_EQ(read_json(dir_ / "out" / "config.json")["vocab_size"], 10);
	for (int r = 0; r < 10; r++)
		expect_row(out, E, r, combine({{0.25, row("base", E, r)}, {0.75, row("tuned", E, r)}}),
		           "row " + std::to_string(r));

	merge("merge_method: linear\nbase_model: base\ntokenizer_source: union\nmodels:\n"
	      "  - model: base\n    parameters: {weight: 1}\n  - model: chat\n    parameters: {weight: 3}\n",
	      "union");
	out = test::read_model(dir_ / "union");
	// a-f, <s>, x, y, w, <|im_start|>, <|im_end|>: 12 tokens, then the base's 3 unnamed rows.
	ASSERT_EQ(out.at(E).size(), 15u * kHidden);
	EXPECT_EQ(read_json(dir_ / "union" / "config.json")["vocab_size"], 15);
	// chat's rows in the output vocabulary: its own, the base's for e and f.
	std::vector<std::vector<double>> chat_rows;
	for (const std::string token : {"a", "b", "c", "d"})
		chat_rows.push_back(own("chat", token));
	chat_rows.push_back(own("base", "e"));
	chat_rows.push_back(own("base", "f"));
	for (const std::string token : {"<s>", "x", "y", "w", "<|im_start|>", "<|im_end|>"})
		chat_rows.push_back(own("chat", token));
	std::vector<double> chat_mean(kHidden, 0.0);
	for (const auto& r : chat_rows)
		for (int c = 0; c < kHidden; c++)
			chat_mean[c] += r[c] / 12.0;
	for (int k = 0; k < 3; k++)
		expect_row(out, E, 12 + k, combine({{0.25, row("base", E, 7 + k)}, {0.75, chat_mean}}),
		           "unnamed row " + std::to_string(k));
}

// Tokens whose ids are beyond a model's embedding rows have no row: left out of the vocabulary,
// and out of the written tokenizer (vocab, added_tokens, the BPE merges that use them).
TEST_F(TokenizerMergeTest, TokensBeyondTheEmbeddingRowsAreLeftOut) {
	make_family();
	make_model("base", {{"a", "b", "c", "d", "e", "f"}, {"<s>", "<UNUSED_0>", "<UNUSED_1>"}}, 7, 1);
	auto tokenizer = read_json(dir_ / "base" / "tokenizer.json");
	tokenizer["model"]["merges"] = {json::array({"a", "b"}), "c <UNUSED_0>"};
	test::write_file(dir_ / "base" / "tokenizer.json", tokenizer.dump(1));
	const auto summary = merge(kLinear + "tokenizer_source: union\n");
	const auto ids = output_ids();
	EXPECT_FALSE(ids.contains("<UNUSED_0>"));
	EXPECT_FALSE(ids.contains("<UNUSED_1>"));
	EXPECT_EQ(ids.at("x"), 7);
	EXPECT_EQ(ids.at("<|im_end|>"), 12);
	const auto written = read_json(dir_ / "out" / "tokenizer.json");
	EXPECT_EQ(written["model"]["merges"], json::array({json::array({"a", "b"})}));
	EXPECT_EQ(written["added_tokens"][0]["content"], "<s>");
	EXPECT_EQ(written["added_tokens"][1]["content"], "x");
	const auto config = read_json(dir_ / "out" / "tokenizer_config.json");
	EXPECT_EQ(config["added_tokens_decoder"]["8"]["content"], "y"); // the ids of the left-out tokens are reused
	for (const auto& [id, entry] : config["added_tokens_decoder"].items())
		EXPECT_EQ(entry["content"].get<std::string>().find("UNUSED"), std::string::npos) << id;
	bool warned = false;
	for (const auto& warning : summary.warnings)
		warned = warned || warning.find("model 'base': 2 token(s)") != std::string::npos;
	EXPECT_TRUE(warned);
	const auto out = test::read_model(dir_ / "out");
	EXPECT_EQ(out.at("model.embed_tokens.weight").size(), 13u * kHidden);
	expect_token(out, "f", own("base", "f"));
}

// A Unigram tokenizer (ids are positions in model.vocab) merges by token string like any other.
TEST_F(TokenizerMergeTest, UnigramVocabulary) {
	make_family();
	make_model("chat", {{"a", "b", "c", "d", "x", "y", "w"}, {"<s>", "<|im_start|>", "<|im_end|>"}}, 10, 2, "Unigram");
	merge(kLinear + "tokenizer_source: union\n");
	const auto out = test::read_model(dir_ / "out");
	EXPECT_EQ(output_ids().at("x"), 7);
	expect_token(out, "x", own("chat", "x"));
	expect_token(out, "d", combine({{4. / 6, own("base", "d")}, {2. / 6, own("chat", "d")}}));
	expect_token(out, "z", own("other", "z"));
	expect_token(out, "a",
	             combine({{1. / 6, own("base", "a")}, {2. / 6, own("chat", "a")}, {3. / 6, own("other", "a")}}));
}

// A fine-tune without tokenizer.json shares the base's vocabulary (with a warning); a donor
// without one has its files copied and the rows left as they are (with a warning).
TEST_F(TokenizerMergeTest, ModelsWithoutTokenizerJson) {
	make_model("base", {{"a", "b", "c", "d", "e", "f"}, {"<s>"}}, 7, 1);
	make_model("plain", {{"a", "b", "c", "d", "e", "f"}, {"<s>"}}, 7, 5);
	fs::remove(dir_ / "plain" / "tokenizer.json");
	const std::string recipe = "merge_method: linear\nbase_model: base\ntokenizer_source: base\nmodels:\n"
	                           "  - model: base\n    parameters: {weight: 1}\n"
	                           "  - model: plain\n    parameters: {weight: 3}\n";
	auto has_warning = [](const MergeSummary& summary, const std::string& text) {
		return std::any_of(summary.warnings.begin(), summary.warnings.end(),
		                   [&](const auto& w) { return w.find(text) != std::string::npos; });
	};
	auto summary = merge(recipe);
	EXPECT_TRUE(has_warning(summary, "model 'plain' has no tokenizer.json: assuming the vocabulary of 'base'"));
	auto out = test::read_model(dir_ / "out");
	const std::string E = "model.embed_tokens.weight";
	for (int r = 0; r < 7; r++)
		expect_row(out, E, r, combine({{0.25, row("base", E, r)}, {0.75, row("plain", E, r)}}), "row");

	fs::remove(dir_ / "base" / "tokenizer.json");
	summary = merge(recipe, "copied");
	EXPECT_TRUE(has_warning(summary, "model 'base' has no tokenizer.json: its tokenizer files are copied"));
	EXPECT_FALSE(fs::exists(dir_ / "copied" / "tokenizer.json"));
	EXPECT_EQ(test::read_file(dir_ / "copied" / "tokenizer_config.json"),
	          test::read_file(dir_ / "base" / "tokenizer_config.json"));
	EXPECT_EQ(test::read_file(dir_ / "copied" / "model.safetensors"),
	          test::read_file(dir_ / "out" / "model.safetensors"));
}

TEST_F(TokenizerMergeTest, ChatTemplates) {
	make_family();
	const auto chatml = read_json(dir_ / "base" / "tokenizer_config.json"); // no template yet
	EXPECT_FALSE(chatml.contains("chat_template"));
	auto set_template = [&](const std::string& model, const std::string& text) {
		auto config = read_json(dir_ / model / "tokenizer_config.json");
		config["chat_template"] = text;
		test::write_file(dir_ / model / "tokenizer_config.json", config.dump(2));
	};
	const std::string a = "{% for m in messages %}A{{ m['content'] }}{% endfor %}";
	const std::string b = "{% for m in messages %}B{{ m['content'] }}{% endfor %}";

	merge(kLinear + "chat_template: auto\n");
	EXPECT_FALSE(read_json(dir_ / "out" / "tokenizer_config.json").contains("chat_template")); // none has one
	set_template("base", a);
	set_template("chat", b + "\n"); // the same once trimmed
	merge(kLinear + "chat_template: auto\n");
	EXPECT_EQ(read_json(dir_ / "out" / "tokenizer_config.json")["chat_template"], a); // a tie: the base's
	test::write_file(dir_ / "other" / "chat_template.jinja", b);                      // read as transformers does
	merge(kLinear + "chat_template: auto\n");
	EXPECT_EQ(read_json(dir_ / "out" / "tokenizer_config.json")["chat_template"], b);
	EXPECT_EQ(read_json(dir_ / "out" / "tokenizer_config.json")["tokenizer_class"], "LlamaTokenizer");

	// A built-in name: the template text as data/chat_templates has it, which replaces the
	// donor's chat_template.jinja.
	test::write_file(dir_ / "base" / "chat_template.jinja", a);
	test::write_file(dir_ / "base" / "added_tokens.json", "{\"<s>\": 6}");
	merge(kLinear + "tokenizer_source: union\nchat_template: chatml\n");
	EXPECT_FALSE(fs::exists(dir_ / "out" / "added_tokens.json")); // legacy, replaced by added_tokens_decoder
	const auto file = test::read_file(std::string(WELD_SOURCE_DIR) + "/data/chat_templates/chatml.jinja");
	EXPECT_EQ(read_json(dir_ / "out" / "tokenizer_config.json")["chat_template"], file);
	EXPECT_NE(file.find("<|im_start|>"), std::string::npos);
	EXPECT_FALSE(fs::exists(dir_ / "out" / "chat_template.jinja"));
	for (const std::string name : {"alpaca", "chatml", "exaone", "llama3", "mistral"})
		EXPECT_TRUE(builtin_chat_template(name).has_value()) << name;

	// A template itself, verbatim.
	const std::string own_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}";
	merge(kLinear + "chat_template: \"" + own_template + "\"\n");
	EXPECT_EQ(read_json(dir_ / "out" / "tokenizer_config.json")["chat_template"], own_template);
	EXPECT_FALSE(fs::exists(dir_ / "out" / "chat_template.jinja"));
}

// Bad input: one clear error, and no output folder (nor temporary one) left behind.
TEST_F(TokenizerMergeTest, BadInputIsOneClearErrorAndWritesNothing) {
	make_family();
	make_model("plain", {{"a", "b", "c", "d", "e", "f"}, {"<s>"}}, 7, 5);
	fs::remove(dir_ / "plain" / "tokenizer.json");
	auto expect_error = [&](const std::string& recipe, const std::vector<std::string>& parts) {
		const auto error = merge_error(recipe);
		for (const auto& part : parts)
			EXPECT_NE(error.find(part), std::string::npos) << "error: " << error << "\nexpected: " << part;
		for (const auto& entry : fs::directory_iterator(dir_.path()))
			EXPECT_EQ(entry.path().filename().string().find("failed"), std::string::npos) << entry.path();
	};
	expect_error(kLinear + "tokenizer:\n  tokens:\n    x:\n      source: nowhere\n",
	             {"tokenizer.tokens['x'].source", "model 'nowhere' is not one of the recipe's models"});
	expect_error(kLinear + "tokenizer:\n  tokens:\n    x:\n      source: {kind: model_token, model: gone, token: a}\n",
	             {"model 'gone' is not one of the recipe's models"});
	expect_error(kLinear + "chat_template: vicuna\n", {"chat_template", "unknown template 'vicuna'", "chatml"});
	expect_error("merge_method: linear\nbase_model: base\ntokenizer_source: union\nmodels:\n"
	             "  - model: base\n    parameters: {weight: 1}\n  - model: plain\n    parameters: {weight: 1}\n",
	             {"model 'plain' has no tokenizer.json", "union"});
	expect_error(kLinear + "tokenizer_source: union\ntokenizer:\n  source: base\n",
	             {"give either 'tokenizer' or 'tokenizer_source'"});
	expect_error(kLinear + "tokenizer:\n  tokens:\n    x:\n      source: {kind: average}\n",
	             {"tokenizer.tokens['x'].source.kind", "'zero' or 'model_token'"});
	expect_error(kLinear + "tokenizer:\n  pad_to_multiple_of: 0\n", {"tokenizer.pad_to_multiple_of"});
	expect_error(kLinear + "tokenizer:\n  tokens:\n    q:\n      source: chat\n", {"model 'chat' has no token 'q'"});
	expect_error(kLinear +
	                 "tokenizer:\n  tokens:\n    q:\n      source: {kind: model_token, model: chat, token_id: 10}\n",
	             {"tokenizer.tokens['q'].source.token_id", "10 is beyond the 10 rows of model 'chat'"});
	expect_error(kLinear + "tokenizer:\n  tokens:\n    q:\n      source: {kind: model_token, model: base, token: x}\n",
	             {"tokenizer.tokens['q'].source.token: model 'base' has no token 'x'"});
	expect_error(kLinear + "tokenizer:\n  tokens:\n    q:\n      source: {kind: model_token, model: base}\n",
	             {"give exactly one of 'token_id' and 'token'"});
	test::write_file(dir_ / "other" / "tokenizer.json", "{\"model\": {\"vocab\": {\"a\": 0,}}}");
	expect_error(kLinear + "tokenizer_source: union\n", {"other/tokenizer.json", "cannot be parsed"});
	test::write_file(dir_ / "other" / "tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}}}");
	expect_error(kLinear + "tokenizer_source: union\n", {"other/tokenizer.json", "model.vocab['a']"});
	test::write_file(dir_ / "other" / "tokenizer.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": {}}}");
	expect_error(kLinear + "tokenizer_source: union\n", {"other/tokenizer.json", "list of [piece, score]"});
	test::write_file(dir_ / "chat" / "special_tokens_map.json", "[");
	expect_error(kLinear + "tokenizer_source: union\n", {"chat/special_tokens_map.json", "cannot be parsed"});
	test::write_file(dir_ / "base" / "tokenizer_config.json", "{\"bos_token\": ");
	expect_error(kLinear + "tokenizer_source: base\n", {"base/tokenizer_config.json", "cannot be parsed"});
	expect_error(kLinear + "chat_template: chatml\n", {"base/tokenizer_config.json", "cannot be parsed"});
}

} // namespace
} // namespace weld
