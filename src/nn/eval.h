// weld eval: perplexity and prompt/answer accuracy of a Llama-family model. Torch-free header,
// so that the command line compiles without libtorch's headers.
//
// Data files:
//   - `.jsonl` with {"input_ids": [...]} per line: one sequence per line, as given.
//   - `.jsonl` with {"prompt": "...", "answer": "..."} per line: accuracy (see below).
//   - anything else is UTF-8 text: each non-empty line is one sequence, tokenized by the model's
//     own tokenizer.json (src/text/tokenizer.h: BOS/EOS as its files say) where the folder has
//     one, else as byte tokens (after BOS when the vocabulary has one). A line longer than
//     max_position_embeddings is cut into pieces that fit, each scored as its own sequence.
// Perplexity is exp of the mean negative log-likelihood of every token after the first of each
// sequence, given the ones before it. A folder whose tokenizer is not a tokenizer.json
// (tokenizer.model, vocab.json, *.tiktoken) takes token ids only.
//
// Accuracy: the prompt's tokens (with chat, the prompt as one user message rendered through the
// model's chat template with add_generation_prompt, tokenized without added special tokens) are
// continued greedily (the most likely token each step, one position per step from the KV cache)
// until EOS, a token that holds a newline, or as many tokens as the answer has plus 8; a record
// is correct when that continuation (up to any newline) equals the answer exactly once leading
// and trailing whitespace is stripped from both.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace weld::nn {

struct EvalOptions {
	std::string dtype = "float32"; // or "bfloat16"
	int threads = 0;               // 0: libtorch's default (all cores)
	bool chat = false;             // prompts through the model's chat template
};

struct EvalReport {
	enum class Kind { Perplexity, Accuracy };
	Kind kind = Kind::Perplexity;
	double perplexity = 0;
	double mean_nll = 0;
	uint64_t tokens = 0; // scored tokens
	uint64_t sequences = 0;
	double accuracy = 0;
	uint64_t correct = 0;
	uint64_t n = 0; // prompt/answer records
};

// Exact match of the procedural tasks (src/nn/tasks.h) on the first `count` held-out prompts
// of each task at seed: a prompt counts when, fed BOS + prompt + answer, the model's most
// likely next token at every answer position is the answer's token. That is the same as greedy
// generation reproducing the answer up to and including its final newline (each greedy step
// sees the right prefix exactly when all steps before it were right), computed in one batched
// forward pass instead of one pass per generated token.
struct TaskScore {
	std::string task;
	uint64_t correct = 0, n = 0;
	double accuracy = 0;
};
std::vector<TaskScore> evaluate_tasks(const std::filesystem::path& model_dir, const std::vector<std::string>& tasks,
                                      size_t count, uint64_t seed, const EvalOptions& options);

EvalReport evaluate(const std::filesystem::path& model_dir, const std::filesystem::path& data,
                    const EvalOptions& options);

// weld verify-protect: the largest |logit difference| between two models of one architecture
// and vocabulary (an original and its protected copy) on `sequences` sequences of `length`
// token ids drawn uniformly from the vocabulary with `seed`.
struct LogitComparison {
	double max_difference = 0;
	double max_abs_logit = 0; // of the first model, for scale
	uint64_t positions = 0;
};
LogitComparison compare_logits(const std::filesystem::path& a, const std::filesystem::path& b, size_t sequences,
                               size_t length, uint64_t seed, const EvalOptions& options);

} // namespace weld::nn
