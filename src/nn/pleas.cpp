// PLeaS: partial matching + layer-wise least squares (nn/align_activation.h).
#include "nn/align_activation.h"

#include "nn/align_capture.h"
#include "util/error.h"

#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <numeric>

namespace weld::nn {
using namespace detail;

namespace {

// One unit of a merged MLP: the ref unit and/or the aligned model's unit it is made of (−1: none).
struct MergedUnit {
	int64_t ref = -1, aligned = -1;
};

// PLeaS's partial matching of one layer's MLP: pairs by falling correlation.
std::vector<MergedUnit> plan_units(const std::vector<double>& correlation, int64_t width) {
	const auto n = static_cast<int64_t>(correlation.size());
	std::vector<int64_t> order(static_cast<size_t>(n));
	std::iota(order.begin(), order.end(), 0);
	std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
		return correlation[static_cast<size_t>(x)] > correlation[static_cast<size_t>(y)];
	});
	const int64_t merged = width >= n ? 2 * n - width : width;
	std::vector<MergedUnit> units;
	for (int64_t i = 0; i < merged; ++i)
		units.push_back({order[static_cast<size_t>(i)], order[static_cast<size_t>(i)]});
	for (int64_t i = merged; i < n && width > n; ++i)
		units.push_back({order[static_cast<size_t>(i)], -1});
	for (int64_t i = merged; i < n && width > n; ++i)
		units.push_back({-1, order[static_cast<size_t>(i)]});
	return units;
}

// Rows (dim 0) or columns (dim 1) of the merged MLP from the two models' (a, b): a pair's mean,
// or the one model's unit; scaled by `single` where only one model has the unit.
at::Tensor gather_units(const at::Tensor& a, const at::Tensor& b, const std::vector<MergedUnit>& units, int64_t dim,
                        double single) {
	std::vector<at::Tensor> parts;
	for (const auto& u : units) {
		if (u.ref >= 0 && u.aligned >= 0)
			parts.push_back((a.select(dim, u.ref) + b.select(dim, u.aligned)) / 2);
		else if (u.ref >= 0)
			parts.push_back(a.select(dim, u.ref) * single);
		else
			parts.push_back(b.select(dim, u.aligned) * single);
	}
	return at::stack(parts, dim);
}

// argmin_W ‖[X 1] Wᵀ − T‖² + ridge·mean(diag)·‖W‖²: the weight [out, in] and, with bias, the bias.
std::pair<at::Tensor, at::Tensor> least_squares(const at::Tensor& x, const at::Tensor& target, bool bias,
                                                double ridge) {
	const auto xx = bias ? at::cat({x, at::ones({x.size(0), 1}, x.options())}, 1) : x;
	auto gram = xx.t().matmul(xx);
	const double scale = gram.diagonal().mean().item<double>();
	gram = gram + at::eye(gram.size(0), gram.options()) * (ridge * std::max(scale, 1e-30));
	const auto solution = at::linalg_solve(gram, xx.t().matmul(target)); // [in(+1), out]
	if (!bias) return {solution.t(), at::Tensor()};
	return {solution.slice(0, 0, x.size(1)).t(), solution[x.size(1)]};
}

} // namespace

LlamaModel pleas_merge(LlamaModel& ref, LlamaModel& aligned, const ActivationMatch& match,
                       const std::vector<std::vector<int64_t>>& sequences, const std::string& ref_config_json,
                       const PleasOptions& options) {
	const auto& c = ref.config();
	const int64_t width = options.width > 0 ? options.width : c.intermediate_size;
	if (width > 2 * c.intermediate_size)
		throw Error(fmt::format("--width {}: at most twice intermediate_size ({})", width, 2 * c.intermediate_size));
	auto config = nlohmann::json::parse(ref_config_json);
	config["intermediate_size"] = width;
	config["torch_dtype"] = "float32";
	auto merged = LlamaModel::create(config.dump(2) + "\n", "merged config", 0);

	std::vector<std::vector<MergedUnit>> plans;
	for (const auto& corr : match.mlp_correlation)
		plans.push_back(plan_units(corr, width));
	std::map<std::string, at::Tensor> start;
	for (const auto& [name, t] : merged.parameters()) {
		const auto a = ref.parameter(name).detach().to(at::kFloat), b = aligned.parameter(name).detach().to(at::kFloat);
		int64_t layer = -1;
		std::sscanf(name.c_str(), "model.layers.%ld.", &layer);
		if (name.find("mlp.gate_proj") != std::string::npos || name.find("mlp.up_proj") != std::string::npos)
			start[name] = gather_units(a, b, plans[static_cast<size_t>(layer)], 0, 1.0);
		else if (name.find("mlp.down_proj") != std::string::npos)
			start[name] = gather_units(a, b, plans[static_cast<size_t>(layer)], 1, 0.5);
		else
			start[name] = (a + b) / 2;
	}
	merged.replace_parameters(start);

	// The linear maps in forward order, in groups that share their input.
	std::vector<std::vector<std::string>> groups;
	for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
		groups.push_back({layer_name(l, "self_attn.q_proj.weight"), layer_name(l, "self_attn.k_proj.weight"),
		                  layer_name(l, "self_attn.v_proj.weight")});
		groups.push_back({layer_name(l, "self_attn.o_proj.weight")});
		groups.push_back({layer_name(l, "mlp.gate_proj.weight"), layer_name(l, "mlp.up_proj.weight")});
		groups.push_back({layer_name(l, "mlp.down_proj.weight")});
	}
	if (!c.tie_word_embeddings) groups.push_back({"lm_head.weight"});
	for (const auto& group : groups) {
		std::map<std::string, Side> inputs, outputs;
		for (const auto& name : group) {
			inputs[name] = Side::Input;
			outputs[name] = Side::Output;
		}
		const auto x = capture(merged, sequences, inputs);
		const auto ya = capture(ref, sequences, outputs);
		const auto yb = capture(aligned, sequences, outputs);
		std::map<std::string, at::Tensor> solved;
		for (const auto& name : group) {
			int64_t layer = -1;
			std::sscanf(name.c_str(), "model.layers.%ld.", &layer);
			const bool widened =
			    name.find("gate_proj") != std::string::npos || name.find("up_proj") != std::string::npos;
			const auto target = widened
			                        ? gather_units(ya.at(name), yb.at(name), plans[static_cast<size_t>(layer)], 1, 1.0)
			                        : (ya.at(name) + yb.at(name)) / 2;
			const auto bias_name = name.substr(0, name.size() - std::string("weight").size()) + "bias";
			const bool bias = merged.parameters().count(bias_name) > 0;
			auto [w, b] = least_squares(x.at(name), target, bias, options.ridge);
			solved[name] = w.to(at::kFloat).contiguous();
			if (bias) solved[bias_name] = b.to(at::kFloat).contiguous();
		}
		merged.replace_parameters(solved);
	}
	return merged;
}

} // namespace weld::nn
