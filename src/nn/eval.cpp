#include "nn/eval.h"

#include "io/safetensors.h"
#include "nn/llama.h"
#include "nn/tasks.h"
#include "nn/tokenizer.h"
#include "nn/twin.h"
#include "tensor/kernels.h"
#include "util/error.h"
#include "util/progress.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <cmath>
#include <optional>

namespace weld::nn {
namespace fs = std::filesystem;

namespace {

constexpr size_t kExtraAnswerTokens = 8; // generated beyond the answer's length, to see it end

at::ScalarType parse_dtype(const std::string& name) {
	if (name == "float32") return at::kFloat;
	if (name == "bfloat16") return at::kBFloat16;
	throw Error(fmt::format("--dtype {}: expected float32 or bfloat16", quote_for_message(name)));
}

at::Tensor as_tensor(const std::vector<int64_t>& ids) {
	return at::tensor(at::ArrayRef<int64_t>(ids), at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
}

// weld's procedural tasks are written for byte tokens.
ByteTokenizer byte_tokenizer(const fs::path& model_dir, const LlamaConfig& config) {
	if (const auto own = own_tokenizer_file(model_dir); !own.empty())
		throw Error(fmt::format("{}: the model has its own tokenizer ({}), which weld eval cannot run; give token "
		                        "ids as JSON lines {{\"input_ids\": [...]}}",
		                        show(model_dir), own));
	return ByteTokenizer(config.vocab_size, model_dir.string());
}

// The model that scores each sequence: a plain folder's one model, or for a twin folder (nn/twin.h)
// θ(x) for the router's weights on the sequence (or its prompt).
class Scorer {
public:
	Scorer(const fs::path& dir, at::ScalarType dtype) {
		if (is_twin_folder(dir))
			twin_.emplace(TwinModel::load(dir, dtype));
		else
			model_.emplace(LlamaModel::load(dir, dtype));
	}
	const LlamaConfig& config() const { return twin_ ? twin_->config() : model_->config(); }
	bool routed() const { return twin_.has_value(); }
	const LlamaModel& plain() const { return *model_; }
	TwinModel& twin() { return *twin_; }
	// The model for a sequence routed on route_ids (a plain folder's model whatever they are; the
	// shared model for no ids).
	const LlamaModel& for_ids(const std::vector<int64_t>& route_ids) {
		if (!twin_) return *model_;
		if (route_ids.empty()) return twin_->shared();
		return twin_->model_for(twin_->route(route_ids));
	}

private:
	std::optional<LlamaModel> model_;
	std::optional<TwinModel> twin_;
};

EvalReport perplexity(Scorer& scorer, const std::vector<std::vector<int64_t>>& sequences, const fs::path& data) {
	const int64_t max_positions = scorer.config().max_position_embeddings;
	EvalReport report;
	double nll = 0;
	Progress progress("eval", sequences.size(), "sequences");
	for (size_t i = 0; i < sequences.size(); ++i, progress.add(1)) {
		const auto& seq = sequences[i];
		if (max_positions > 0 && static_cast<int64_t>(seq.size()) > max_positions)
			throw Error(fmt::format("{}: sequence {} has {} tokens, more than max_position_embeddings {}", show(data),
			                        i + 1, seq.size(), max_positions));
		++report.sequences;
		if (seq.size() < 2) continue;
		const auto ids = as_tensor(seq);
		const auto& model = scorer.for_ids(seq);
		nll -= token_log_likelihoods(model.forward(ids), ids).to(at::kDouble).sum().item<double>();
		report.tokens += seq.size() - 1;
	}
	if (report.tokens == 0) throw Error(fmt::format("{}: no token follows another, nothing to score", show(data)));
	report.mean_nll = nll / static_cast<double>(report.tokens);
	report.perplexity = std::exp(report.mean_nll);
	return report;
}

// Each line's tokens, cut into pieces that fit the model's positions.
std::vector<std::vector<int64_t>> text_sequences(const fs::path& data, const ModelTokenizer& tokenizer,
                                                 int64_t max_positions) {
	std::vector<std::vector<int64_t>> out;
	for (const auto& line : read_text_lines(data))
		for (auto& piece : tokenizer.encode_line(line, max_positions))
			out.push_back(std::move(piece));
	return out;
}

std::string_view strip(std::string_view s) {
	const auto first = s.find_first_not_of(" \t\r\n");
	if (first == std::string_view::npos) return {};
	return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

// The greedy continuation of a prompt's ids (see eval.h for when it stops): the prompt in one
// forward pass, then one position per generated token from the KV cache.
std::string continue_greedily(const LlamaModel& model, const ModelTokenizer& tokenizer, const std::vector<int64_t>& ids,
                              size_t max_tokens) {
	const auto max_positions = static_cast<size_t>(model.config().max_position_embeddings);
	const auto fits = [&](size_t length) { return max_positions == 0 || length < max_positions; };
	if (ids.empty() || max_tokens == 0 || !fits(ids.size())) return "";
	LlamaModel::KvCache cache;
	auto logits = model.forward_cached(as_tensor(ids), cache);
	std::vector<int64_t> generated;
	while (true) {
		const int64_t next = logits[0][-1].argmax().item<int64_t>();
		if (tokenizer.is_eos(next)) break;
		generated.push_back(next);
		if (tokenizer.decode({next}).find('\n') != std::string::npos) break;
		if (generated.size() >= max_tokens || !fits(ids.size() + generated.size())) break;
		logits = model.forward_cached(as_tensor({next}), cache);
	}
	const auto text = tokenizer.decode(generated);
	return text.substr(0, text.find('\n'));
}

EvalReport accuracy(Scorer& scorer, const ModelTokenizer& tokenizer, bool chat, const std::vector<PromptAnswer>& tasks,
                    const fs::path& data) {
	if (tasks.empty()) throw Error(fmt::format("{}: no prompt/answer records", show(data)));
	EvalReport report;
	report.kind = EvalReport::Kind::Accuracy;
	Progress progress("eval", tasks.size(), "prompts");
	for (const auto& task : tasks) {
		const auto prompt = tokenizer.encode_prompt(task.prompt, chat);
		const auto& model = scorer.for_ids(scorer.routed() ? prompt : std::vector<int64_t>{});
		const size_t budget = tokenizer.encode_plain(task.answer).size() + kExtraAnswerTokens;
		const auto answer = continue_greedily(model, tokenizer, prompt, budget);
		if (strip(answer) == strip(task.answer)) ++report.correct;
		++report.n;
		progress.add(1);
	}
	report.accuracy = static_cast<double>(report.correct) / static_cast<double>(report.n);
	return report;
}

// Examples of one task scored in batches of kScoreBatch sequences.
constexpr size_t kScoreBatch = 256;

// A twin folder scores each example with θ(x) routed on BOS + prompt (the sequence less the answer).
uint64_t count_exact_matches(Scorer& scorer, const ByteTokenizer& tokenizer,
                             const std::vector<tasks::Example>& examples) {
	uint64_t correct = 0;
	for (size_t first = 0; first < examples.size(); first += kScoreBatch) {
		const size_t n = std::min(kScoreBatch, examples.size() - first);
		std::vector<std::vector<int64_t>> seqs;
		for (size_t i = 0; i < n; ++i) {
			const auto& e = examples[first + i];
			seqs.push_back(tokenizer.encode(e.prompt + e.answer));
		}
		at::Tensor predicted; // [n, longest]: the token after each position
		if (!scorer.routed()) {
			predicted = scorer.plain().forward(right_padded_ids(seqs)).argmax(-1);
		} else {
			std::vector<std::vector<int64_t>> prompts;
			for (size_t i = 0; i < n; ++i)
				prompts.emplace_back(seqs[i].begin(),
				                     seqs[i].end() - static_cast<std::ptrdiff_t>(examples[first + i].answer.size()));
			const auto weights = scorer.twin().route(prompts);
			const auto ids = right_padded_ids(seqs);
			predicted = at::zeros(ids.sizes(), at::kLong);
			for (size_t i = 0; i < n; ++i) {
				const auto row = ids[static_cast<int64_t>(i)].slice(0, 0, static_cast<int64_t>(seqs[i].size()));
				const auto& model = scorer.twin().model_for(weights[static_cast<int64_t>(i)]);
				predicted[static_cast<int64_t>(i)]
				    .slice(0, 0, row.size(0))
				    .copy_(model.forward(row.unsqueeze(0)).argmax(-1)[0]);
			}
		}
		const auto p = predicted.accessor<int64_t, 2>();
		for (size_t i = 0; i < n; ++i) {
			const auto& seq = seqs[i];
			const size_t answer_from = seq.size() - examples[first + i].answer.size();
			bool all = true;
			for (size_t t = answer_from; t < seq.size() && all; ++t)
				all = p[static_cast<int64_t>(i)][static_cast<int64_t>(t) - 1] == seq[t];
			correct += all;
		}
	}
	return correct;
}

} // namespace

std::vector<TaskScore> evaluate_tasks(const fs::path& model_dir, const std::vector<std::string>& names, size_t count,
                                      uint64_t seed, const EvalOptions& options) {
	const auto dtype = parse_dtype(options.dtype);
	if (options.threads > 0) at::set_num_threads(options.threads);
	if (count == 0) throw Error("--held-out must be positive");
	const auto chosen = tasks::find_tasks(names);
	Scorer scorer(model_dir, dtype);
	const auto tokenizer = byte_tokenizer(model_dir, scorer.config());
	const at::NoGradGuard no_grad;
	std::vector<TaskScore> scores;
	Progress progress("eval", chosen.size(), "tasks");
	for (const auto task : chosen) {
		const auto examples = tasks::split_examples(task, seed, count, true);
		TaskScore score{std::string(tasks::task_info(task).name), count_exact_matches(scorer, tokenizer, examples),
		                examples.size(), 0};
		score.accuracy = static_cast<double>(score.correct) / static_cast<double>(score.n);
		scores.push_back(std::move(score));
		progress.add(1);
	}
	return scores;
}

EvalReport evaluate(const fs::path& model_dir, const fs::path& data, const EvalOptions& options) {
	const auto dtype = parse_dtype(options.dtype);
	if (options.threads > 0) at::set_num_threads(options.threads);
	if (!fs::is_regular_file(data)) throw Error(fmt::format("{}: no such file", show(data)));
	const auto kind = detect_data_kind(data);
	Scorer scorer(model_dir, dtype);
	const at::NoGradGuard no_grad;
	const auto& config = scorer.config();
	if (options.chat && kind != DataKind::PromptAnswer)
		throw Error(fmt::format("{}: --chat applies to prompt/answer files", show(data)));
	switch (kind) {
	case DataKind::TokenIds:
		return perplexity(scorer, read_token_id_lines(data, config.vocab_size), data);
	case DataKind::Text: {
		const ModelTokenizer tokenizer(model_dir, config.vocab_size);
		return perplexity(scorer, text_sequences(data, tokenizer, config.max_position_embeddings), data);
	}
	case DataKind::PromptAnswer:
		return accuracy(scorer, ModelTokenizer(model_dir, config.vocab_size), options.chat,
		                read_prompt_answer_lines(data), data);
	}
	return {};
}

LogitComparison compare_logits(const fs::path& a, const fs::path& b, size_t sequences, size_t length, uint64_t seed,
                               const EvalOptions& options) {
	if (options.threads > 0) at::set_num_threads(options.threads);
	const auto first = LlamaModel::load(a, parse_dtype(options.dtype));
	const auto second = LlamaModel::load(b, parse_dtype(options.dtype));
	const int64_t vocab = first.config().vocab_size;
	if (second.config().vocab_size != vocab)
		throw Error(fmt::format("{} and {}: vocabularies of {} and {} tokens", show(a), show(b), vocab,
		                        second.config().vocab_size));
	if (sequences == 0 || length == 0) throw Error("--sequences and --length must be positive");
	const at::NoGradGuard no_grad;
	LogitComparison result;
	const uint64_t key = random_stream_key(seed, "verify-protect", 0);
	for (size_t s = 0; s < sequences; s++) {
		std::vector<int64_t> ids(length);
		for (size_t i = 0; i < length; i++)
			ids[i] = static_cast<int64_t>(random_uniform(key, s * length + i) * static_cast<double>(vocab));
		const auto x = first.forward(as_tensor(ids)).to(at::kDouble),
		           y = second.forward(as_tensor(ids)).to(at::kDouble);
		result.max_difference = std::max(result.max_difference, (x - y).abs().max().item<double>());
		result.max_abs_logit = std::max(result.max_abs_logit, x.abs().max().item<double>());
		result.positions += length;
	}
	return result;
}

} // namespace weld::nn
