#include "learned/expert_merging.h"

#include "util/error.h"

#include <torch/optim/adam.h>

#include <cmath>

namespace weld::learned {

namespace {

// A calibration sample: BOS + prompt + its expert's greedy answer, and the expert's outputs on it.
struct Sample {
	std::vector<int64_t> ids;
	size_t expert = 0;
	at::Tensor logits;              // [L, V]
	std::vector<at::Tensor> hidden; // per layer [L, H]
};

std::vector<Sample> expert_samples(TaskVectorModel& tv, const std::vector<std::vector<std::vector<int64_t>>>& prompts,
                                   size_t max_new) {
	const at::NoGradGuard no_grad;
	std::vector<Sample> out;
	const auto K = static_cast<int64_t>(tv.experts());
	for (int64_t k = 0; k < K; ++k) {
		auto one_hot = at::zeros({K, 1}, tv.base(0).options());
		one_hot[k][0] = 1;
		tv.apply(one_hot);
		for (const auto& answered : greedy_answers(tv.model(), prompts[static_cast<size_t>(k)], max_new)) {
			Sample s{answered.ids, static_cast<size_t>(k), {}, {}};
			std::vector<at::Tensor> hidden;
			s.logits = tv.model().forward(nn::right_padded_ids({s.ids}), &hidden)[0];
			for (const auto& h : hidden)
				s.hidden.push_back(h[0]);
			out.push_back(std::move(s));
		}
	}
	return out;
}

// α per element of tensor n from the chunk coefficients alpha [K, m].
at::Tensor per_element(const at::Tensor& alpha, size_t k, const at::Tensor& like) {
	const auto row = alpha[static_cast<int64_t>(k)];
	if (row.size(0) == 1) return row[0];
	const int64_t d = like.numel(), size = (d + row.size(0) - 1) / row.size(0);
	return row.repeat_interleave(size).slice(0, 0, d).view(like.sizes());
}

std::vector<at::Tensor> learn_stage(TaskVectorModel& tv, const std::vector<Sample>& samples,
                                    const std::vector<int64_t>& chunks, const ExpertMergingOptions& o, int stage,
                                    const std::function<void(const ExpertMergingStep&)>& on_step) {
	const auto K = static_cast<int64_t>(tv.experts());
	const double init = std::log(o.lambda_init / (1 - o.lambda_init));
	std::vector<at::Tensor> logits;
	int64_t coefficients = 0;
	for (size_t n = 0; n < chunks.size(); ++n) {
		logits.push_back(at::full({K, chunks[n]}, init, tv.base(n).options()).requires_grad_(true));
		coefficients += chunks[n];
	}
	torch::optim::Adam optimizer(logits, torch::optim::AdamOptions(o.lr));
	const PromptOrder order(samples.size(), o.seed + static_cast<uint64_t>(stage));
	const double T = o.temperature;
	for (int64_t step = 0; step < o.steps; ++step) {
		std::vector<const Sample*> batch;
		std::vector<std::vector<int64_t>> ids;
		for (int64_t i = 0; i < o.batch; ++i) {
			batch.push_back(&samples[order(static_cast<uint64_t>(step * o.batch + i))]);
			ids.push_back(batch.back()->ids);
		}
		tv.apply_tensors([&](size_t n) {
			auto theta = tv.base(n);
			const auto alpha = at::sigmoid(logits[n]);
			for (int64_t k = 0; k < K; ++k)
				theta = theta + per_element(alpha, static_cast<size_t>(k), theta) * tv.delta(static_cast<size_t>(k), n);
			return theta;
		});
		std::vector<at::Tensor> hidden;
		const auto z = tv.model().forward(nn::right_padded_ids(ids), &hidden);
		auto loss = at::zeros({}, z.options());
		for (size_t b = 0; b < batch.size(); ++b) {
			const auto L = static_cast<int64_t>(batch[b]->ids.size());
			const auto student = at::log_softmax(z[static_cast<int64_t>(b)].slice(0, 0, L) / T, -1);
			const auto teacher = at::softmax(batch[b]->logits / T, -1);
			auto sample_loss = -(teacher * student).sum(-1).mean() * T * T;
			auto mse = at::zeros({}, z.options());
			for (size_t l = 0; l < hidden.size(); ++l)
				mse = mse + (hidden[l][static_cast<int64_t>(b)].slice(0, 0, L) - batch[b]->hidden[l]).pow(2).mean();
			sample_loss = sample_loss + o.hidden_weight * mse / static_cast<double>(hidden.size());
			loss = loss + sample_loss / static_cast<double>(batch.size());
		}
		auto deviation = at::zeros({}, z.options());
		for (const auto& r : logits)
			deviation = deviation + (at::sigmoid(r) - o.lambda_init).abs().sum();
		loss = loss + o.regularization * deviation / static_cast<double>(coefficients);
		optimizer.zero_grad();
		loss.backward();
		optimizer.step();
		if (on_step) on_step({stage, step, loss.item<double>()});
	}
	std::vector<at::Tensor> alpha;
	for (const auto& r : logits)
		alpha.push_back(at::sigmoid(r.detach()));
	return alpha;
}

// Expert Merging++'s chunks: about `mean` per tensor, in proportion to importance.
std::vector<int64_t> chunks_by_importance(const TaskVectorModel& tv, const std::vector<at::Tensor>& alpha,
                                          double mean) {
	std::vector<double> importance(alpha.size());
	double total = 0;
	for (size_t n = 0; n < alpha.size(); ++n) {
		for (size_t k = 0; k < tv.experts(); ++k)
			importance[n] += std::abs(alpha[n][static_cast<int64_t>(k)][0].item<double>()) *
			                 tv.delta(k, n).abs().mean().item<double>() * static_cast<double>(tv.base(n).numel());
		total += importance[n];
	}
	std::vector<int64_t> chunks;
	for (size_t n = 0; n < alpha.size(); ++n) {
		const double share = total > 0 ? importance[n] / total : 1.0 / static_cast<double>(alpha.size());
		const auto m = static_cast<int64_t>(std::llround(mean * static_cast<double>(alpha.size()) * share));
		chunks.push_back(std::clamp<int64_t>(m, 1, tv.base(n).numel()));
	}
	return chunks;
}

} // namespace

ExpertMergingResult learn_expert_merging(TaskVectorModel& tv,
                                         const std::vector<std::vector<std::vector<int64_t>>>& prompts,
                                         const ExpertMergingOptions& o,
                                         const std::function<void(const ExpertMergingStep&)>& on_step) {
	if (o.steps < 0 || o.batch <= 0 || !(o.lr > 0) || !(o.temperature > 0) || !(o.lambda_init > 0 && o.lambda_init < 1))
		throw Error("expert_merging: steps >= 0, batch > 0, lr > 0, temperature > 0 and lambda_init in (0, 1) needed");
	if (prompts.size() != tv.experts()) throw Error("expert_merging: one prompt set per expert needed");
	const auto samples = expert_samples(tv, prompts, o.max_new_tokens);
	std::vector<int64_t> chunks(tv.names().size(), 1);
	auto alpha = learn_stage(tv, samples, chunks, o, 1, on_step);
	if (o.plus) {
		chunks = chunks_by_importance(tv, alpha, o.chunks);
		alpha = learn_stage(tv, samples, chunks, o, 2, on_step);
	}
	const at::NoGradGuard no_grad;
	tv.apply_tensors([&](size_t n) {
		auto theta = tv.base(n);
		for (size_t k = 0; k < tv.experts(); ++k)
			theta = theta + per_element(alpha[n], k, theta) * tv.delta(k, n);
		return theta;
	});
	bool chunked = false;
	for (auto m : chunks)
		chunked = chunked || m > 1;
	return {alpha, chunked};
}

} // namespace weld::learned
