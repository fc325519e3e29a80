#include "learned/task_vector_model.h"

#include "nn/tokenizer.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>

namespace weld::learned {
namespace fs = std::filesystem;

TaskVectorModel::TaskVectorModel(const fs::path& base, const std::vector<fs::path>& experts, at::ScalarType dtype)
    : model_(nn::LlamaModel::load(base, dtype)) {
	if (experts.empty()) throw Error("a learned merge needs at least one model besides the base");
	for (const auto& [name, tensor] : model_.parameters()) {
		names_.push_back(name);
		base_.push_back(tensor.detach().clone());
	}
	for (const auto& dir : experts) {
		const auto expert = nn::LlamaModel::load(dir, dtype);
		std::vector<at::Tensor> deltas;
		for (size_t i = 0; i < names_.size(); ++i) {
			auto it = expert.parameters().find(names_[i]);
			if (it == expert.parameters().end() || !it->second.sizes().equals(base_[i].sizes()))
				throw Error(
				    fmt::format("{}: tensor '{}' is missing or shaped unlike the base's", dir.string(), names_[i]));
			deltas.push_back(it->second - base_[i]);
		}
		if (expert.parameters().size() != names_.size())
			throw Error(fmt::format("{}: holds {} tensors, the base {}", dir.string(), expert.parameters().size(),
			                        names_.size()));
		deltas_.push_back(std::move(deltas));
	}
}

void TaskVectorModel::apply(const at::Tensor& c) {
	const auto groups = c.size(1);
	if (c.dim() != 2 || c.size(0) != static_cast<int64_t>(experts()) ||
	    (groups != 1 && groups != static_cast<int64_t>(names_.size())))
		throw Error("coefficients must be [experts, 1] or [experts, tensors]");
	apply_tensors([&](size_t n) {
		auto theta = base_[n];
		for (size_t k = 0; k < experts(); ++k)
			theta = theta + c[static_cast<int64_t>(k)][groups == 1 ? 0 : static_cast<int64_t>(n)] * deltas_[k][n];
		return theta;
	});
}

void TaskVectorModel::apply_tensors(const std::function<at::Tensor(size_t tensor)>& merged) {
	std::map<std::string, at::Tensor> values;
	for (size_t n = 0; n < names_.size(); ++n)
		values[names_[n]] = merged(n);
	model_.replace_parameters(values);
}

std::vector<Answered> greedy_answers(const nn::LlamaModel& model, const std::vector<std::vector<int64_t>>& prompts,
                                     size_t max_new) {
	const at::NoGradGuard no_grad;
	std::vector<Answered> out;
	for (const auto& p : prompts)
		out.push_back({p, p.size()});
	std::vector<bool> done(out.size(), false);
	const int64_t limit = model.config().max_position_embeddings;
	for (size_t step = 0; step < max_new; ++step) {
		std::vector<std::vector<int64_t>> seqs;
		for (const auto& a : out)
			seqs.push_back(a.ids);
		const auto ids = nn::right_padded_ids(seqs);
		if (limit > 0 && ids.size(1) >= limit) break;
		const auto logits = model.forward(ids); // each sequence's last real position sees only its own tokens
		bool any = false;
		for (size_t b = 0; b < out.size(); ++b) {
			if (done[b]) continue;
			const auto last = static_cast<int64_t>(out[b].ids.size()) - 1;
			const int64_t next = logits[static_cast<int64_t>(b)][last].argmax().item<int64_t>();
			out[b].ids.push_back(next);
			done[b] = next == '\n' || next == nn::ByteTokenizer::kEos;
			any = any || !done[b];
		}
		if (!any) break;
	}
	return out;
}

at::Tensor mean_answer_entropy(const nn::LlamaModel& model, const std::vector<Answered>& answered) {
	size_t positions = 0;
	std::vector<std::vector<int64_t>> seqs;
	for (const auto& a : answered) {
		positions += a.ids.size() - a.answer_from;
		seqs.push_back(a.ids);
	}
	if (positions == 0) throw Error("no answer token to take the entropy of");
	const auto ids = nn::right_padded_ids(seqs);
	auto mask = at::zeros(ids.sizes(), at::kBool);
	auto m = mask.accessor<bool, 2>();
	for (size_t b = 0; b < answered.size(); ++b)
		for (size_t t = answered[b].answer_from; t < answered[b].ids.size(); ++t)
			m[static_cast<int64_t>(b)][static_cast<int64_t>(t) - 1] = true; // position t - 1 predicts token t
	const auto logits = model.forward(ids);
	const auto log_p = at::log_softmax(logits.to(logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat), -1);
	const auto entropy = -(log_p.exp() * log_p).sum(-1); // [B, L]
	return entropy.masked_select(mask).mean();
}

std::vector<std::vector<int64_t>> read_prompts(const fs::path& file, const nn::LlamaModel& model,
                                               const fs::path& model_dir) {
	if (!fs::is_regular_file(file)) throw Error(fmt::format("{}: no such file", file.string()));
	if (const auto own = nn::own_tokenizer_file(model_dir); !own.empty())
		throw Error(fmt::format("{}: the model has its own tokenizer ({}); learned merges read byte-token prompts only",
		                        model_dir.string(), own));
	const nn::ByteTokenizer tokenizer(model.config().vocab_size, model_dir.string());
	std::vector<std::vector<int64_t>> prompts;
	if (nn::detect_data_kind(file) == nn::DataKind::PromptAnswer) {
		for (const auto& r : nn::read_prompt_answer_lines(file))
			prompts.push_back(tokenizer.encode(r.prompt));
	} else if (nn::detect_data_kind(file) == nn::DataKind::Text) {
		for (const auto& line : nn::read_text_lines(file))
			prompts.push_back(tokenizer.encode(line));
	} else {
		throw Error(fmt::format("{}: learned merges read prompts (prompt/answer JSONL or text lines), not token ids",
		                        file.string()));
	}
	prompts.erase(std::remove_if(prompts.begin(), prompts.end(), [](const auto& p) { return p.empty(); }),
	              prompts.end());
	if (prompts.empty()) throw Error(fmt::format("{}: no prompt in it", file.string()));
	return prompts;
}

} // namespace weld::learned
