#include "learned/dam.h"

#include "learned/adamerging.h"
#include "learned/concrete.h"
#include "nn/loss.h"
#include "util/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/optim/adam.h>

namespace weld::learned {

DamResult learn_dam(TaskVectorModel& tv, const std::vector<std::vector<int64_t>>& prompts,
                    const std::vector<nn::TrainingSequence>& examples, const DamOptions& o,
                    const std::function<void(const DamStep&)>& on_step) {
	if (o.steps < 0 || o.batch <= 0 || !(o.lr > 0) || !(o.backdoor_lr > 0) || !(o.temperature > 0) || o.alpha < 0)
		throw Error("dam: steps >= 0, batch > 0, lr > 0, backdoor_lr > 0, temperature > 0 and alpha >= 0 needed");
	if (prompts.empty() || examples.size() < static_cast<size_t>(o.batch))
		throw Error(fmt::format("dam: the clean data holds {} labeled examples; batch {} needs at least as many",
		                        examples.size(), o.batch));
	const size_t tensors = tv.names().size();
	std::vector<at::Tensor> x, y, summed;
	double total = 0;
	for (size_t n = 0; n < tensors; ++n) {
		x.push_back(at::zeros_like(tv.base(n)).requires_grad_(true));
		y.push_back(at::full_like(tv.base(n), o.backdoor_init).requires_grad_(true));
		auto sum = at::zeros_like(tv.base(n));
		for (size_t k = 0; k < tv.experts(); ++k)
			sum += tv.delta(k, n);
		summed.push_back(sum);
		total += static_cast<double>(tv.base(n).numel());
	}
	torch::optim::Adam shared_optimizer(x, torch::optim::AdamOptions(o.lr));
	// ε far below Adam's usual 1e-8: the removal reward's gradient per weight is α/N · b(1 − b)/T.
	torch::optim::Adam backdoor_optimizer(y, torch::optim::AdamOptions(o.backdoor_lr).eps(1e-12));
	auto generator = at::detail::createCPUGenerator(o.seed);
	const PromptOrder prompt_order(prompts.size(), o.seed), example_order(examples.size(), o.seed);
	const auto T = o.temperature;
	// θ = θ_base + λ m̂ ⊙ (1 − b) ⊙ Σ τ for the masks' logits and noise.
	auto merged = [&](size_t n, const at::Tensor& xs, const at::Tensor& ys, const at::Tensor& noise_s,
	                  const at::Tensor& noise_b) {
		return tv.base(n) +
		       o.lambda * rescaled_concrete_mask(xs, noise_s, T) * (1 - at::sigmoid((noise_b + ys) / T)) * summed[n];
	};
	for (int64_t step = 0; step < o.steps; ++step) {
		const auto noise_s = concrete_noise(tv, generator), noise_b = concrete_noise(tv, generator);
		// (1) The task-shared mask: entropy of the greedy answers, b fixed.
		const double entropy = entropy_step(
		    tv, shared_optimizer,
		    [&](bool track) {
			    tv.apply_tensors([&](size_t n) {
				    return merged(n, track ? x[n] : x[n].detach(), y[n].detach(), noise_s[n], noise_b[n]);
			    });
		    },
		    prompt_batch(prompts, prompt_order, step, o.batch), 16);
		// (2) The backdoor-detection mask: clean cross-entropy minus α · mean(b), m̂ fixed.
		std::vector<nn::TrainingSequence> batch;
		for (int64_t i = 0; i < o.batch; ++i)
			batch.push_back(examples[example_order(static_cast<uint64_t>(step * o.batch + i))]);
		tv.apply_tensors([&](size_t n) { return merged(n, x[n].detach(), y[n], noise_s[n], noise_b[n]); });
		auto removal = at::zeros({}, y[0].options());
		for (size_t n = 0; n < tensors; ++n)
			removal = removal + at::sigmoid((noise_b[n] + y[n]) / T).sum();
		const auto clean = nn::mean_target_loss(tv.model(), batch);
		const auto loss = clean - o.alpha * removal / total;
		backdoor_optimizer.zero_grad();
		loss.backward();
		backdoor_optimizer.step();
		if (on_step) {
			const at::NoGradGuard no_grad;
			double removed = 0;
			for (const auto& l : y)
				removed += at::sigmoid(l / T).sum().item<double>();
			on_step({step, entropy, clean.item<double>(), removed / total});
		}
	}
	const at::NoGradGuard no_grad;
	DamResult result;
	std::vector<at::Tensor> noise_s, noise_b;
	if (o.sample_final) {
		noise_s = concrete_noise(tv, generator);
		noise_b = concrete_noise(tv, generator);
	}
	std::vector<at::Tensor> shared, backdoor;
	for (size_t n = 0; n < tensors; ++n) {
		result.shared_logits.push_back(x[n].detach());
		result.backdoor_logits.push_back(y[n].detach());
		const auto zs = o.sample_final ? noise_s[n] : at::zeros_like(x[n]);
		const auto zb = o.sample_final ? noise_b[n] : at::zeros_like(y[n]);
		result.kept += (at::sigmoid((zs + x[n].detach()) / T) > 0.5).sum().item<double>();
		result.removed += (at::sigmoid((zb + y[n].detach()) / T) > 0.5).sum().item<double>();
		shared.push_back(zs);
		backdoor.push_back(zb);
	}
	result.kept /= total;
	result.removed /= total;
	for (size_t n = 0; n < tensors; ++n)
		result.coefficients.push_back(rescaled_concrete_mask(x[n].detach(), shared[n], T) *
		                              (1 - at::sigmoid((backdoor[n] + y[n].detach()) / T)));
	apply_dam_coefficients(tv, result.coefficients, o.lambda, "dam");
	return result;
}

void apply_dam_coefficients(TaskVectorModel& tv, const std::vector<at::Tensor>& coefficients, double lambda,
                            const std::string& source) {
	if (coefficients.size() != tv.names().size())
		throw Error(
		    fmt::format("{}: {} mask tensors for a model of {}", source, coefficients.size(), tv.names().size()));
	for (size_t n = 0; n < coefficients.size(); ++n)
		if (!coefficients[n].sizes().equals(tv.base(n).sizes()))
			throw Error(fmt::format("{}: the mask of {} has the wrong shape", source, tv.names()[n]));
	const at::NoGradGuard no_grad;
	tv.apply_tensors([&](size_t n) {
		auto sum = at::zeros_like(tv.base(n));
		for (size_t k = 0; k < tv.experts(); ++k)
			sum += tv.delta(k, n);
		return tv.base(n) + lambda * coefficients[n].to(sum.scalar_type()) * sum;
	});
}

} // namespace weld::learned
