// weld eval and weld train on a folder with its own tokenizer.json (the Llama-3-style test
// tokenizer of tests/data/tokenizers, whose ids tests/text_tokenizer_test.cpp checks against
// @huggingface/tokenizers): text is tokenized by it, --chat renders prompts through the folder's
// chat template, and generation (KV cache) continues the prompt's real tokens.
#include "nn/eval.h"
#include "nn/llama.h"
#include "nn/tokenizer.h"
#include "nn/train.h"
#include "nn_test_util.h"
#include "text/tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace weld {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kTokenizer = fs::path(WELD_SOURCE_DIR) / "tests/data/tokenizers/llama3";

at::Tensor as_tensor(const std::vector<int64_t>& ids) {
	return at::tensor(at::ArrayRef<int64_t>(ids), at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
}

class EvalWithTokenizer : public ::testing::Test {
protected:
	void SetUp() override {
		const auto config = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 48,
			"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 3264,
			"max_position_embeddings": 256, "initializer_range": 0.5})";
		nn::LlamaModel::create(config, "tiny", 4).save(dir());
		for (const char* name : {"tokenizer.json", "tokenizer_config.json"})
			fs::copy_file(kTokenizer / name, dir() / name);
	}
	fs::path dir() const { return tmp / "model"; }
	test::TempDir tmp;
};

// Perplexity over the tokenizer's ids: as many scored tokens as the lines have ids after the first.
TEST_F(EvalWithTokenizer, TextIsTokenizedByTheFolderTokenizer) {
	const std::vector<std::string> lines = {"Hello world, café 漢字 👍🏽",
	                                        "<|begin_of_text|>it's 12345 tokens\tand more"};
	test::write_file(tmp / "text.txt", lines[0] + "\n" + lines[1] + "\n");
	const auto tokenizer = text::Tokenizer::load(kTokenizer);
	const auto model = nn::LlamaModel::load(dir());
	const at::NoGradGuard no_grad;
	uint64_t tokens = 0;
	double nll = 0;
	for (const auto& line : lines) {
		const auto ids = tokenizer.encode(line);
		ASSERT_EQ(ids.front(), *tokenizer.token_to_id("<|begin_of_text|>"));
		tokens += ids.size() - 1;
		nll -= nn::token_log_likelihoods(model.forward(as_tensor(ids)), as_tensor(ids)).sum().item<double>();
	}
	const auto report = nn::evaluate(dir(), tmp / "text.txt", {});
	EXPECT_EQ(report.tokens, tokens);
	EXPECT_NEAR(report.mean_nll, nll / static_cast<double>(tokens), 1e-5);
}

// --chat: the prompt as one user message through the folder's template (Llama-3-Instruct's, in
// tokenizer_config.json), tokenized without adding BOS again. Whether weld eval then continues
// those ids greedily is TaskAccuracy.OneForwardPassAgreesWithGreedyGeneration's concern.
TEST_F(EvalWithTokenizer, ChatPromptsGoThroughTheTemplate) {
	const auto tokenizer = text::Tokenizer::load(kTokenizer);
	const nn::ModelTokenizer model_tokenizer(dir(), 3264);
	const std::string prompt = "What is the capital of France?";
	const auto ids = model_tokenizer.encode_prompt(prompt, true);
	const auto rendered = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + prompt +
	                      "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
	EXPECT_EQ(ids, tokenizer.encode(rendered, false));
	EXPECT_EQ(std::count(ids.begin(), ids.end(), *tokenizer.bos_id()), 1);
	EXPECT_EQ(model_tokenizer.encode_prompt(prompt, false), tokenizer.encode(prompt));
	test::write_file(tmp / "qa.jsonl", json({{"prompt", prompt}, {"answer", "Paris"}}).dump() + "\n");
	EXPECT_EQ(nn::evaluate(dir(), tmp / "qa.jsonl", {"float32", 0, true}).n, 1u);
}

TEST_F(EvalWithTokenizer, TrainingSequencesUseTheTokenizer) {
	test::write_file(tmp / "qa.jsonl", R"({"prompt": "Question: 2+2?", "answer": " four"})"
	                                   "\n");
	const auto tokenizer = text::Tokenizer::load(kTokenizer);
	const auto prompt = tokenizer.encode("Question: 2+2?"), answer = tokenizer.encode(" four", false);
	const auto sequences = nn::read_sequences(tmp / "qa.jsonl", 3264, 256, dir().string());
	ASSERT_EQ(sequences.size(), 1u);
	auto expected = prompt;
	expected.insert(expected.end(), answer.begin(), answer.end());
	EXPECT_EQ(sequences[0].ids, expected);
	EXPECT_EQ(sequences[0].loss_from, prompt.size());
}

TEST_F(EvalWithTokenizer, ClearErrors) {
	test::write_file(tmp / "qa.jsonl", R"({"prompt": "a", "answer": "b"})"
	                                   "\n");
	test::write_file(tmp / "text.txt", "a\n");
	// --chat without a chat template; --chat on a text file.
	auto config = json::parse(test::read_file(dir() / "tokenizer_config.json"));
	config.erase("chat_template");
	test::write_file(dir() / "tokenizer_config.json", config.dump());
	EXPECT_NE(test::error_of([&] {
		          nn::evaluate(dir(), tmp / "qa.jsonl", {"float32", 0, true});
	          }).find("--chat needs the model's chat template"),
	          std::string::npos);
	EXPECT_NE(test::error_of([&] {
		          nn::evaluate(dir(), tmp / "text.txt", {"float32", 0, true});
	          }).find("--chat applies to prompt/answer files"),
	          std::string::npos);
	// A tokenizer with more ids than the model has rows.
	test::edit_config(dir(), {{"vocab_size", 3000}});
	fs::remove(dir() / "model.safetensors");
	nn::LlamaModel::create(test::read_file(dir() / "config.json"), "small", 1).save(tmp / "small");
	for (const char* name : {"tokenizer.json", "tokenizer_config.json"})
		fs::copy_file(dir() / name, tmp / "small" / name);
	EXPECT_NE(test::error_of([&] {
		          nn::evaluate(tmp / "small", tmp / "text.txt", {});
	          }).find("tokenizer.json has token ids up to 3261, beyond the model's vocab_size 3000"),
	          std::string::npos);
	// A SentencePiece model file alone is not run.
	fs::remove(tmp / "small" / "tokenizer.json");
	test::write_file(tmp / "small" / "tokenizer.model", "not read");
	EXPECT_NE(test::error_of([&] {
		          nn::evaluate(tmp / "small", tmp / "text.txt", {});
	          }).find("the model's tokenizer is tokenizer.model, which weld cannot run"),
	          std::string::npos);
}

} // namespace
} // namespace weld
