#include "learned/localize_stitch.h"

#include "nn/loss.h"
#include "util/error.h"

#include <torch/optim/adam.h>

#include <cmath>

namespace weld::learned {

namespace {

// +bias on the top floor(density · d) entries of |τ|, −bias elsewhere.
at::Tensor initial_logits(const at::Tensor& delta, double density, double bias) {
	auto logits = at::full(delta.sizes(), -bias, delta.options());
	const auto k = static_cast<int64_t>(std::floor(density * static_cast<double>(delta.numel())));
	if (k > 0) logits.view({-1}).index_fill_(0, std::get<1>(delta.abs().reshape({-1}).topk(k)), bias);
	return logits;
}

} // namespace

std::vector<at::Tensor> learn_localize_mask(TaskVectorModel& tv, size_t expert,
                                            const std::vector<nn::TrainingSequence>& examples, const LocalizeOptions& o,
                                            const std::function<void(const LocalizeStep&)>& on_step) {
	if (o.steps < 0 || !(o.lr > 0) || o.l1 < 0 || !(o.density >= 0 && o.density <= 1))
		throw Error("localize_stitch: steps >= 0, lr > 0, l1 >= 0 and density in [0, 1] needed");
	if (examples.empty()) throw Error("localize_stitch: no example to learn the mask on");
	const size_t tensors = tv.names().size();
	std::vector<at::Tensor> logits;
	double total = 0;
	for (size_t n = 0; n < tensors; ++n) {
		logits.push_back(initial_logits(tv.delta(expert, n), o.density, o.sigmoid_bias).requires_grad_(true));
		total += static_cast<double>(logits.back().numel());
	}
	torch::optim::Adam optimizer(logits, torch::optim::AdamOptions(o.lr));
	for (int64_t step = 0; step < o.steps; ++step) {
		tv.apply_tensors([&](size_t n) { return tv.base(n) + at::sigmoid(logits[n]) * tv.delta(expert, n); });
		auto sparsity = at::zeros({}, logits[0].options());
		for (const auto& s : logits)
			sparsity = sparsity + at::sigmoid(s).sum();
		const auto task_loss = nn::mean_target_loss(tv.model(), examples);
		const auto loss = task_loss + o.l1 * sparsity / total;
		optimizer.zero_grad();
		loss.backward();
		optimizer.step();
		if (on_step) {
			double kept = 0;
			for (const auto& s : logits)
				kept += (s > 0).sum().item<double>();
			on_step({expert, step, task_loss.item<double>(), kept / total});
		}
	}
	std::vector<at::Tensor> masks;
	for (const auto& s : logits)
		masks.push_back((s.detach() > 0).to(s.scalar_type()));
	return masks;
}

void stitch(TaskVectorModel& tv, const std::vector<std::vector<at::Tensor>>& masks) {
	const at::NoGradGuard no_grad;
	tv.apply_tensors([&](size_t n) {
		auto count = at::zeros_like(tv.base(n)), sum = at::zeros_like(tv.base(n));
		for (size_t k = 0; k < masks.size(); ++k) {
			count += masks[k][n];
			sum += masks[k][n] * tv.delta(k, n);
		}
		return tv.base(n) + at::where(count > 0, sum / count.clamp_min(1), at::zeros_like(sum));
	});
}

} // namespace weld::learned
