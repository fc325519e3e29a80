#include "learned/adamerging.h"

#include "util/error.h"

#include <torch/optim/adam.h>

namespace weld::learned {

at::Tensor learn_adamerging(TaskVectorModel& tv, const std::vector<std::vector<int64_t>>& prompts,
                            const AdaMergingOptions& o, const std::function<void(const AdaMergingStep&)>& on_step) {
	if (o.steps < 0 || o.batch <= 0 || !(o.lr > 0)) throw Error("adamerging: steps >= 0, batch > 0 and lr > 0 needed");
	const int64_t groups = o.layer_wise ? static_cast<int64_t>(tv.names().size()) : 1;
	const auto dtype = tv.base(0).scalar_type();
	auto lambda =
	    at::full({static_cast<int64_t>(tv.experts()), groups}, o.lambda_init, at::TensorOptions().dtype(dtype))
	        .requires_grad_(true);
	torch::optim::Adam optimizer({lambda}, torch::optim::AdamOptions(o.lr));
	const auto n = prompts.size();
	for (int64_t step = 0; step < o.steps; ++step) {
		std::vector<std::vector<int64_t>> batch;
		for (int64_t i = 0; i < o.batch; ++i)
			batch.push_back(prompts[static_cast<size_t>(step * o.batch + i) % n]);
		tv.apply(lambda.detach());
		const auto answered = greedy_answers(tv.model(), batch, o.max_new_tokens);
		tv.apply(lambda);
		const auto entropy = mean_answer_entropy(tv.model(), answered);
		optimizer.zero_grad();
		entropy.backward();
		optimizer.step();
		if (on_step) on_step({step, entropy.item<double>()});
	}
	tv.apply(lambda.detach());
	return lambda.detach();
}

} // namespace weld::learned
