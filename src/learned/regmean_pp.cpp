#include "learned/regmean_pp.h"

#include "methods/regmean.h"
#include "util/error.h"

#include <fmt/format.h>

#include <set>

namespace weld::learned {

namespace {

// The linear weights merged together, in forward order.
std::vector<std::vector<std::string>> stages(const nn::LlamaModel& model) {
	std::vector<std::vector<std::string>> out;
	for (int64_t l = 0; l < model.config().num_hidden_layers; ++l) {
		const auto p = fmt::format("model.layers.{}.", l);
		out.push_back({p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"});
		out.push_back({p + "self_attn.o_proj.weight"});
		out.push_back({p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"});
		out.push_back({p + "mlp.down_proj.weight"});
	}
	if (!model.config().tie_word_embeddings) out.push_back({"lm_head.weight"});
	return out;
}

// XᵀX / N of the inputs of the stage's weights, over every token of the sequences.
std::map<std::string, at::Tensor> stage_grams(nn::LlamaModel& merged, const std::set<std::string>& stage,
                                              const std::vector<nn::TrainingSequence>& sequences) {
	std::map<std::string, at::Tensor> sums;
	merged.set_linear_observer([&](const std::string& name, const at::Tensor& x, const at::Tensor&) {
		if (!stage.count(name)) return;
		const auto rows = x.detach().reshape({-1, x.size(-1)}).to(at::kFloat);
		auto& sum = sums[name];
		sum = sum.defined() ? sum + at::matmul(rows.t(), rows) : at::matmul(rows.t(), rows);
	});
	const at::NoGradGuard no_grad;
	int64_t tokens = 0;
	for (const auto& s : sequences) { // one at a time: no padding to mask out
		merged.forward(at::tensor(s.ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0));
		tokens += static_cast<int64_t>(s.ids.size());
	}
	merged.set_linear_observer({});
	for (auto& [name, sum] : sums)
		sum = (sum / static_cast<double>(tokens)).contiguous();
	return sums;
}

std::span<const float> values(const at::Tensor& t) {
	return {t.data_ptr<float>(), static_cast<size_t>(t.numel())};
}

} // namespace

void regmean_pp(const std::vector<const nn::LlamaModel*>& models,
                const std::vector<std::vector<nn::TrainingSequence>>& data, double alpha, nn::LlamaModel& merged) {
	if (models.empty() || models.size() != data.size()) throw Error("regmean_pp: one data set per model needed");
	const auto order = stages(merged);
	std::set<std::string> linear;
	for (const auto& stage : order)
		linear.insert(stage.begin(), stage.end());
	const at::NoGradGuard no_grad;
	auto& params = merged.parameters();
	for (auto& [name, p] : params) { // everything else: the plain average
		if (linear.count(name)) continue;
		auto sum = at::zeros_like(p);
		for (const auto* m : models)
			sum += m->parameter(name);
		p.copy_(sum / static_cast<double>(models.size()));
	}
	for (const auto& stage : order) {
		const std::set<std::string> names(stage.begin(), stage.end());
		std::vector<std::map<std::string, at::Tensor>> grams;
		for (const auto& sequences : data)
			grams.push_back(stage_grams(merged, names, sequences));
		for (const auto& name : stage) {
			auto& target = params.at(name);
			std::vector<std::span<const float>> weights, g;
			for (size_t i = 0; i < models.size(); ++i) {
				weights.push_back(values(models[i]->parameter(name)));
				g.push_back(values(grams[i].at(name)));
			}
			auto out = at::empty_like(target);
			try {
				regmean_solve(weights, g, static_cast<size_t>(target.size(0)), static_cast<size_t>(target.size(1)),
				              alpha, {out.data_ptr<float>(), static_cast<size_t>(out.numel())});
			} catch (const Error& e) {
				throw Error(fmt::format("tensor '{}': RegMean++: {}", name, e.what()));
			}
			target.copy_(out);
		}
	}
}

} // namespace weld::learned
