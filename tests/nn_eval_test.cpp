// weld eval and its inputs: the byte tokenizer, the JSON-lines readers, and the command's
// figures against the NumPy reference (tests/nn_reference.py). No torch headers here.
#include "nn/eval.h"
#include "nn/tasks.h"
#include "nn/tokenizer.h"
#include "nn_test_util.h"
#include "util/error.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>

namespace weld {
namespace {

using nlohmann::json;

using test::error_of;

TEST(ByteTokenizer, BytesWithSpecialsWhenTheVocabularyHasRoom) {
	const nn::ByteTokenizer with(258, "m"), without(256, "m");
	EXPECT_EQ(with.encode("hi\xff"), (std::vector<int64_t>{256, 'h', 'i', 255}));
	EXPECT_EQ(without.encode("hi"), (std::vector<int64_t>{'h', 'i'}));
	EXPECT_EQ(with.decode({256, 'o', 'k', 257}), "ok");
	EXPECT_NE(error_of([] { nn::ByteTokenizer(64, "tiny"); }).find("input_ids"), std::string::npos);
}

TEST(EvalData, KindsAndErrorsWithLineNumbers) {
	test::TempDir tmp;
	test::write_file(tmp / "ids.jsonl", "{\"input_ids\": [1, 2]}\n\n{\"input_ids\": [300]}\n");
	test::write_file(tmp / "qa.jsonl",
	                 "{\"prompt\": \"2+2=\", \"answer\": \"4\"}\n{\"prompt\": \"x\", \"answer\": 4}\n");
	test::write_file(tmp / "bad.jsonl", "{\"input_ids\": [1]}\n{\"input_ids\": [1,\n");
	test::write_file(tmp / "text.txt", "one\n\ntwo\r\n");
	EXPECT_EQ(nn::detect_data_kind(tmp / "ids.jsonl"), nn::DataKind::TokenIds);
	EXPECT_EQ(nn::detect_data_kind(tmp / "qa.jsonl"), nn::DataKind::PromptAnswer);
	EXPECT_EQ(nn::detect_data_kind(tmp / "text.txt"), nn::DataKind::Text);
	EXPECT_EQ(nn::read_text_lines(tmp / "text.txt"), (std::vector<std::string>{"one", "two"}));
	EXPECT_NE(error_of([&] {
		          nn::read_token_id_lines(tmp / "ids.jsonl", 258);
	          }).find("ids.jsonl:3: token id 300 is outside the model's vocabulary [0, 258)"),
	          std::string::npos);
	EXPECT_EQ(nn::read_token_id_lines(tmp / "ids.jsonl", 1000).size(), 2u);
	EXPECT_NE(
	    error_of([&] { nn::read_prompt_answer_lines(tmp / "qa.jsonl"); }).find("qa.jsonl:2: 'answer' must be a string"),
	    std::string::npos);
	EXPECT_NE(error_of([&] { nn::read_token_id_lines(tmp / "bad.jsonl", 10); }).find("bad.jsonl:2: invalid JSON"),
	          std::string::npos);
}

// A byte-level model whose greedy choices are letters or a newline (every other lm_head row is
// zero, the newline's is large), so that generations end and are valid JSON strings.
class EvalCommand : public ::testing::Test {
protected:
	void SetUp() override {
		if (!test::have_numpy()) GTEST_SKIP() << "needs /usr/bin/python3 with NumPy (python3-numpy)";
		TinyLlamaSpec spec;
		spec.hidden = 32;
		spec.intermediate = 48;
		spec.heads = 4;
		spec.kv_heads = 2;
		spec.vocab = 258;
		auto tensors = make_tiny_llama(spec, 21);
		for (auto& t : tensors)
			if (t.name == "lm_head.weight")
				for (uint64_t row = 0; row < t.shape[0]; ++row)
					for (uint64_t col = 0; col < t.shape[1]; ++col) {
						float& v = t.values[row * t.shape[1] + col];
						v = row == '\n' ? 4 * v : (row >= 'a' && row <= 'z') ? v : 0.0f;
					}
		write_tiny_llama(model(), spec, tensors);
	}
	std::filesystem::path model() const { return tmp / "model"; }
	json eval_json(const std::string& data) {
		std::string out, err;
		EXPECT_EQ(test::run_weld("eval " + model().string() + " --data " + data + " --json", &err, &out), 0) << err;
		return json::parse(out);
	}
	test::TempDir tmp;
};

std::vector<int64_t> bytes_after_bos(const std::string& text) {
	std::vector<int64_t> ids{256};
	for (unsigned char c : text)
		ids.push_back(c);
	return ids;
}

TEST_F(EvalCommand, AccuracyOfGreedyAnswers) {
	const std::vector<std::string> prompts = {"abc", "hello", "the cat", "x", "q: ", "zz top", "weld"};
	std::vector<std::vector<int64_t>> seqs;
	for (const auto& p : prompts)
		seqs.push_back(bytes_after_bos(p));
	const auto reference = test::run_reference(model(), seqs, 24);
	std::string records;
	size_t correct = 0, n = 0;
	for (size_t i = 0; i < prompts.size(); ++i) {
		if (!reference["stopped"][i].get<bool>()) continue;
		std::string answer;
		for (int64_t id : reference["continuations"][i].get<std::vector<int64_t>>())
			answer.push_back(static_cast<char>(id));
		records += json{{"prompt", prompts[i]}, {"answer", " " + answer}}.dump() + "\n"; // stripped: a match
		records += json{{"prompt", prompts[i]}, {"answer", answer + "q"}}.dump() + "\n"; // one letter too many
		correct += 1;
		n += 2;
	}
	ASSERT_GE(correct, 1u) << "no reference generation ended within 24 bytes";
	test::write_file(tmp / "qa.jsonl", records);
	const auto out = eval_json((tmp / "qa.jsonl").string());
	ASSERT_TRUE(out.is_object());
	EXPECT_EQ(out.size(), 2u) << out.dump();
	EXPECT_EQ(out["n"].get<size_t>(), n);
	EXPECT_DOUBLE_EQ(out["accuracy"].get<double>(), static_cast<double>(correct) / static_cast<double>(n));
}

double reference_perplexity(const json& reference, size_t* tokens) {
	double nll = 0;
	*tokens = 0;
	for (const auto& seq : reference["log_likelihoods"])
		for (const auto& ll : seq) {
			nll -= ll.get<double>();
			++*tokens;
		}
	return std::exp(nll / static_cast<double>(*tokens));
}

TEST_F(EvalCommand, PerplexityOfTokenIds) {
	const std::vector<std::vector<int64_t>> seqs = {{256, 5, 9, 200, 17}, {7}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 257}};
	std::string records;
	for (const auto& s : seqs)
		records += json{{"input_ids", s}}.dump() + "\n";
	test::write_file(tmp / "ids.jsonl", records);
	size_t tokens = 0;
	const double expected = reference_perplexity(test::run_reference(model(), seqs), &tokens);
	const auto out = eval_json((tmp / "ids.jsonl").string());
	EXPECT_EQ(out["tokens"].get<size_t>(), tokens);
	EXPECT_EQ(tokens, 14u);
	EXPECT_NEAR(out["perplexity"].get<double>(), expected, 1e-5 * expected);
}

// Lines are sequences; one longer than max_position_embeddings (128) is cut into pieces that fit.
TEST_F(EvalCommand, PerplexityOfTextLines) {
	std::string long_line;
	for (int i = 0; i < 30; ++i)
		long_line += "word " + std::to_string(i) + " ";
	ASSERT_GT(long_line.size(), 127u);
	test::write_file(tmp / "text.txt", "hello world\n\nabc\n" + long_line + "\n");
	size_t tokens = 0;
	const double expected =
	    reference_perplexity(test::run_reference(model(), {bytes_after_bos("hello world"), bytes_after_bos("abc"),
	                                                       bytes_after_bos(long_line.substr(0, 127)),
	                                                       bytes_after_bos(long_line.substr(127))}),
	                         &tokens);
	const auto out = eval_json((tmp / "text.txt").string());
	EXPECT_EQ(out["tokens"].get<size_t>(), 14u + long_line.size());
	EXPECT_EQ(tokens, 14u + long_line.size());
	EXPECT_NEAR(out["perplexity"].get<double>(), expected, 1e-5 * expected);

	std::string human;
	EXPECT_EQ(test::run_weld("eval " + model().string() + " --data " + (tmp / "text.txt").string(), nullptr, &human),
	          0);
	EXPECT_NE(human.find("perplexity"), std::string::npos) << human;
	EXPECT_NE(human.find(fmt::format("over {} tokens in 4 sequences", tokens)), std::string::npos) << human;
}

TEST_F(EvalCommand, ClearErrors) {
	test::write_file(tmp / "text.txt", "hello\n");
	std::string err;
	test::edit_config(model(), {{"architectures", {"MPTForCausalLM"}}});
	EXPECT_EQ(test::run_weld("eval " + model().string() + " --data " + (tmp / "text.txt").string(), &err), 1);
	EXPECT_NE(err.find("'MPTForCausalLM' is not supported"), std::string::npos) << err;

	test::edit_config(model(), {{"architectures", {"MistralForCausalLM"}}});
	test::write_file(model() / "tokenizer.json", "{}");
	EXPECT_EQ(test::run_weld("eval " + model().string() + " --data " + (tmp / "text.txt").string(), &err), 1);
	EXPECT_NE(err.find("tokenizer.json"), std::string::npos) << err;

	EXPECT_EQ(test::run_weld("eval " + model().string() + " --data " + (tmp / "missing.txt").string(), &err), 1);
	EXPECT_NE(err.find("missing.txt: no such file"), std::string::npos) << err;
}

// evaluate_tasks scores all answer positions in one forward pass; weld eval --data generates
// greedily token by token. On a model that gets some prompts right and some wrong (the
// first quality-benchmark family's lightly trained base, kept in tests/data) they must agree
// prompt for prompt, task by task.
TEST(TaskAccuracy, OneForwardPassAgreesWithGreedyGeneration) {
	const auto base = std::filesystem::path(WELD_SOURCE_DIR) / "tests/data/transformers/base";
	ASSERT_TRUE(std::filesystem::exists(base / "config.json")) << base << " missing";
	test::TempDir tmp;
	const size_t count = 40;
	const auto scores = nn::evaluate_tasks(base, {"all"}, count, 0, {});
	ASSERT_EQ(scores.size(), tasks::all_tasks().size());
	int mixed = 0;
	for (const auto& score : scores) {
		const auto file = tmp / (score.task + ".jsonl");
		tasks::write_task_file(file, tasks::find_task(score.task), 0, count, true);
		const auto greedy = nn::evaluate(base, file, {});
		EXPECT_EQ(score.n, count);
		EXPECT_EQ(score.correct, greedy.correct) << score.task;
		mixed += score.correct > 0 && score.correct < count;
	}
	EXPECT_GE(mixed, 2) << "the base model should get some prompts of several tasks right and some wrong";
}

} // namespace
} // namespace weld
