#include "learned/adamerging.h"

#include "tensor/kernels.h"
#include "util/error.h"

#include <numeric>

#include <torch/optim/adam.h>

namespace weld::learned {

PromptOrder::PromptOrder(size_t n, uint64_t seed) : n_(n), seed_(seed) {}

size_t PromptOrder::operator()(uint64_t index) const {
	const uint64_t epoch = index / n_;
	if (epoch != epoch_) { // a Fisher-Yates shuffle with counter-based draws: same order on any machine
		order_.resize(n_);
		std::iota(order_.begin(), order_.end(), size_t{0});
		const uint64_t key = random_stream_key(seed_, "prompt order", epoch);
		for (uint64_t i = n_ - 1; i > 0; --i) {
			const auto j = static_cast<uint64_t>(random_uniform(key, i) * static_cast<double>(i + 1));
			std::swap(order_[i], order_[std::min(j, i)]);
		}
		epoch_ = epoch;
	}
	return order_[index % n_];
}

double entropy_step(TaskVectorModel& tv, torch::optim::Optimizer& optimizer,
                    const std::function<void(bool track)>& set_model, const std::vector<std::vector<int64_t>>& prompts,
                    size_t max_new_tokens) {
	set_model(false);
	const auto answered = greedy_answers(tv.model(), prompts, max_new_tokens);
	set_model(true);
	const auto entropy = mean_answer_entropy(tv.model(), answered);
	optimizer.zero_grad();
	entropy.backward();
	optimizer.step();
	return entropy.item<double>();
}

std::vector<std::vector<int64_t>> prompt_batch(const std::vector<std::vector<int64_t>>& prompts,
                                               const PromptOrder& order, int64_t step, int64_t batch) {
	std::vector<std::vector<int64_t>> out;
	for (int64_t i = 0; i < batch; ++i)
		out.push_back(prompts[order(static_cast<uint64_t>(step * batch + i))]);
	return out;
}

at::Tensor learn_adamerging(TaskVectorModel& tv, const std::vector<std::vector<int64_t>>& prompts,
                            const AdaMergingOptions& o, const std::function<void(const AdaMergingStep&)>& on_step) {
	if (o.steps < 0 || o.batch <= 0 || !(o.lr > 0)) throw Error("adamerging: steps >= 0, batch > 0 and lr > 0 needed");
	const int64_t groups = o.layer_wise ? static_cast<int64_t>(tv.names().size()) : 1;
	const auto dtype = tv.base(0).scalar_type();
	auto lambda =
	    at::full({static_cast<int64_t>(tv.experts()), groups}, o.lambda_init, at::TensorOptions().dtype(dtype))
	        .requires_grad_(true);
	torch::optim::Adam optimizer({lambda}, torch::optim::AdamOptions(o.lr));
	const PromptOrder order(prompts.size(), o.seed);
	for (int64_t step = 0; step < o.steps; ++step) {
		const double entropy = entropy_step(
		    tv, optimizer, [&](bool track) { tv.apply(track ? lambda : lambda.detach()); },
		    prompt_batch(prompts, order, step, o.batch), o.max_new_tokens);
		if (on_step) on_step({step, entropy});
	}
	tv.apply(lambda.detach());
	return lambda.detach();
}

} // namespace weld::learned
