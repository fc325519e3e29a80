#include "learned/concrete.h"

#include "util/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adam.h>

namespace weld::learned {

std::vector<at::Tensor> concrete_noise(TaskVectorModel& tv, at::Generator& generator) {
	std::vector<at::Tensor> noise;
	for (size_t n = 0; n < tv.names().size(); ++n) {
		const auto u = at::rand(tv.base(n).sizes(), generator, at::TensorOptions().dtype(tv.base(n).scalar_type()))
		                   .clamp(1e-7, 1 - 1e-7);
		noise.push_back(at::log(u) - at::log1p(-u));
	}
	return noise;
}

at::Tensor rescaled_concrete_mask(const at::Tensor& logits, const at::Tensor& noise, double temperature) {
	const auto m = at::sigmoid((noise + logits) / temperature);
	return m / m.mean().clamp_min(1e-12);
}

double learn_concrete(TaskVectorModel& tv, const std::vector<std::vector<int64_t>>& prompts, const ConcreteOptions& o,
                      const std::function<void(const ConcreteStep&)>& on_step) {
	if (o.steps < 0 || o.batch <= 0 || !(o.lr > 0) || !(o.temperature > 0))
		throw Error("concrete: steps >= 0, batch > 0, lr > 0 and temperature > 0 needed");
	const size_t tensors = tv.names().size();
	std::vector<at::Tensor> logits, summed;
	for (size_t n = 0; n < tensors; ++n) {
		logits.push_back(at::zeros_like(tv.base(n)).requires_grad_(true));
		auto sum = at::zeros_like(tv.base(n));
		for (size_t k = 0; k < tv.experts(); ++k)
			sum += tv.delta(k, n);
		summed.push_back(sum);
	}
	torch::optim::Adam optimizer(logits, torch::optim::AdamOptions(o.lr));
	auto generator = at::detail::createCPUGenerator(o.seed);
	const PromptOrder order(prompts.size(), o.seed);
	for (int64_t step = 0; step < o.steps; ++step) {
		const auto noise = concrete_noise(tv, generator);
		const double entropy = entropy_step(
		    tv, optimizer,
		    [&](bool track) {
			    tv.apply_tensors([&](size_t n) {
				    const auto x = track ? logits[n] : logits[n].detach();
				    return tv.base(n) + o.lambda * rescaled_concrete_mask(x, noise[n], o.temperature) * summed[n];
			    });
		    },
		    prompt_batch(prompts, order, step, o.batch), 16);
		if (on_step) {
			const at::NoGradGuard no_grad;
			double keep = 0, count = 0;
			for (const auto& x : logits) {
				keep += at::sigmoid(x).sum().item<double>();
				count += static_cast<double>(x.numel());
			}
			on_step({step, entropy, keep / count});
		}
	}
	double above = 0, count = 0;
	std::vector<at::Tensor> masks;
	{
		const at::NoGradGuard no_grad;
		const auto noise = concrete_noise(tv, generator);
		for (size_t n = 0; n < tensors; ++n) {
			masks.push_back(rescaled_concrete_mask(logits[n].detach(), noise[n], o.temperature));
			above += (at::sigmoid((noise[n] + logits[n].detach()) / o.temperature) > 0.5).sum().item<double>();
			count += static_cast<double>(masks.back().numel());
		}
		for (size_t n = 0; n < tensors && o.adamerging; ++n)
			for (size_t k = 0; k < tv.experts(); ++k)
				tv.scale_delta(k, n, masks[n]);
	}
	if (o.adamerging) {
		learn_adamerging(tv, prompts, o.ada, {});
	} else {
		const at::NoGradGuard no_grad;
		tv.apply_tensors([&](size_t n) { return tv.base(n) + o.lambda * masks[n] * summed[n]; });
	}
	return above / count;
}

} // namespace weld::learned
