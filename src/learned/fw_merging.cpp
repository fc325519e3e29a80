#include "learned/fw_merging.h"

#include "learned/adamerging.h"

#include "nn/loss.h"
#include "util/error.h"

#include <torch/optim/adam.h>

#include <algorithm>

namespace weld::learned {

std::vector<int64_t> fw_vertices(const at::Tensor& inner, const at::Tensor& c, double scaling) {
	const auto g = inner.to(at::kDouble).contiguous();
	const auto current = (c.to(at::kDouble) * g).sum(0); // ⟨g^l, θ_t^l − θ_base^l⟩
	std::vector<int64_t> chosen(static_cast<size_t>(g.size(1)), -2);
	for (int64_t l = 0; l < g.size(1); ++l) {
		const double here = current[l].item<double>();
		double best = -here; // the base vertex: ⟨g, θ_base − θ_t⟩
		int64_t pick = -1;
		for (int64_t k = 0; k < g.size(0); ++k) {
			const double v = scaling * g[k][l].item<double>() - here;
			if (v < best) best = v, pick = k;
		}
		if (best < 0) chosen[static_cast<size_t>(l)] = pick;
	}
	return chosen;
}

namespace {

// AdaMerging over the chosen models: entropy of the greedy answers to the proxy prompts.
at::Tensor refine_chosen(TaskVectorModel& tv, const std::vector<nn::TrainingSequence>& proxy, const at::Tensor& start,
                         const std::vector<bool>& used, const FwOptions& o) {
	std::vector<std::vector<int64_t>> prompts;
	for (const auto& s : proxy)
		prompts.emplace_back(s.ids.begin(), s.ids.begin() + static_cast<int64_t>(s.loss_from));
	auto keep = at::zeros_like(start);
	for (size_t k = 0; k < used.size(); ++k)
		if (used[k]) keep[static_cast<int64_t>(k)].fill_(1);
	auto c = start.clone().requires_grad_(true);
	torch::optim::Adam optimizer({c}, torch::optim::AdamOptions(o.soft_lr));
	for (int64_t step = 0; step < o.soft_steps; ++step)
		entropy_step(
		    tv, optimizer, [&](bool track) { tv.apply(track ? c * keep : (c * keep).detach()); }, prompts, 16);
	return (c * keep).detach();
}

} // namespace

at::Tensor learn_fw_merging(TaskVectorModel& tv, const std::vector<nn::TrainingSequence>& proxy, const FwOptions& o,
                            const std::function<void(const FwStep&)>& on_step) {
	if (o.steps < 0 || !(o.step_size > 0)) throw Error("fw_merging: steps >= 0 and step_size > 0 needed");
	if (proxy.empty()) throw Error("fw_merging: no proxy sequence");
	const auto K = static_cast<int64_t>(tv.experts()), T = static_cast<int64_t>(tv.names().size());
	auto c = at::zeros({K, T}, at::TensorOptions().dtype(tv.base(0).scalar_type()));
	std::vector<bool> used(static_cast<size_t>(K), false);
	for (int64_t step = 0; step < o.steps; ++step) {
		auto coefficients = c.clone().requires_grad_(true);
		tv.apply(coefficients);
		const auto loss = nn::mean_target_loss(tv.model(), proxy);
		loss.backward();
		const auto chosen = fw_vertices(coefficients.grad(), c, o.scaling);
		const double gamma = std::min(1.0, o.step_size * 2.0 / static_cast<double>(step + 2));
		const at::NoGradGuard no_grad;
		for (int64_t l = 0; l < T; ++l) {
			const int64_t i = chosen[static_cast<size_t>(l)];
			if (i == -2) continue;
			c.select(1, l).mul_(1 - gamma); // θ + γ(v − θ): every coefficient shrinks ...
			if (i >= 0) {
				c[i][l] += gamma * o.scaling; // ... and the vertex's model gains
				used[static_cast<size_t>(i)] = true;
			}
		}
		if (on_step) on_step({step, loss.item<double>(), chosen});
	}
	if (o.soft) c = refine_chosen(tv, proxy, c, used, o);
	tv.apply(c);
	return c;
}

} // namespace weld::learned
