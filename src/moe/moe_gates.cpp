#include "moe/moe_gates.h"

#include "linalg/linalg.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace weld::moe {
namespace {

// [layers][hidden] in double, layer-major.
using LayerVectors = std::vector<double>;

void normalize_rows(LayerVectors& v, int64_t hidden) {
	for (size_t begin = 0; begin < v.size(); begin += static_cast<size_t>(hidden)) {
		double sq = 0;
		for (int64_t i = 0; i < hidden; ++i)
			sq += v[begin + static_cast<size_t>(i)] * v[begin + static_cast<size_t>(i)];
		const double norm = std::max(std::sqrt(sq), 1e-8);
		for (int64_t i = 0; i < hidden; ++i)
			v[begin + static_cast<size_t>(i)] /= norm;
	}
}

// cheap_embed: the embeddings of all tokens of all prompts summed, normalized, for every layer.
LayerVectors embedding_sum(const std::vector<std::string>& prompts, const GateSources& s,
                           const std::vector<float>& embedding) {
	const auto h = static_cast<size_t>(s.hidden);
	LayerVectors sum(h, 0.0);
	for (const auto& prompt : prompts)
		for (const int64_t id : s.tokenize(prompt))
			for (size_t i = 0; i < h; ++i)
				sum[i] += embedding[static_cast<size_t>(id) * h + i];
	normalize_rows(sum, s.hidden);
	LayerVectors out;
	for (int64_t layer = 0; layer < s.layers; ++layer)
		out.insert(out.end(), sum.begin(), sum.end());
	return out;
}

// hidden modes: the mean over the prompts of each prompt's layer inputs.
LayerVectors mean_states(const std::vector<std::string>& prompts, const GateSources& s, bool average) {
	LayerVectors mean(static_cast<size_t>(s.layers * s.hidden), 0.0);
	for (const auto& prompt : prompts) {
		const auto states = s.prompt_states(s.tokenize(prompt), average);
		if (states.size() != mean.size())
			throw Error(fmt::format("weld moe: hidden states of {} values, expected {} layers × {}", states.size(),
			                        s.layers, s.hidden));
		for (size_t i = 0; i < mean.size(); ++i)
			mean[i] += states[i];
	}
	for (auto& v : mean)
		v /= static_cast<double>(prompts.size());
	return mean;
}

GateVectors random_gates(GateMode mode, int64_t experts, const GateSources& s) {
	GateVectors g{s.layers, experts, s.hidden, {}};
	g.values.resize(static_cast<size_t>(s.layers * experts * s.hidden));
	const uint64_t key = random_stream_key(s.seed, "weld moe gate", 0);
	const double bound = std::sqrt(1.0 / static_cast<double>(s.hidden));
	for (size_t i = 0; i < g.values.size(); ++i)
		g.values[i] = static_cast<float>(mode == GateMode::Random ? linalg::random_normal(key, i)
		                                                          : (random_uniform(key, i) * 2 - 1) * bound);
	return g;
}

} // namespace

GateVectors compute_gate_vectors(GateMode mode, const std::vector<const ExpertSpec*>& gated, const GateSources& s) {
	const auto experts = static_cast<int64_t>(gated.size());
	if (!uses_prompts(mode)) return random_gates(mode, experts, s);
	const std::vector<float> embedding = mode == GateMode::CheapEmbed ? s.embedding() : std::vector<float>{};
	const auto prompt_vector = [&](const std::vector<std::string>& prompts) {
		return mode == GateMode::CheapEmbed ? embedding_sum(prompts, s, embedding)
		                                    : mean_states(prompts, s, mode == GateMode::HiddenAvg);
	};
	GateVectors g{s.layers, experts, s.hidden, {}};
	g.values.resize(static_cast<size_t>(s.layers * experts * s.hidden));
	for (int64_t e = 0; e < experts; ++e) {
		auto v = prompt_vector(gated[static_cast<size_t>(e)]->positive_prompts);
		if (!gated[static_cast<size_t>(e)]->negative_prompts.empty()) {
			const auto negative = prompt_vector(gated[static_cast<size_t>(e)]->negative_prompts);
			for (size_t i = 0; i < v.size(); ++i)
				v[i] -= negative[i];
		}
		normalize_rows(v, s.hidden);
		for (int64_t layer = 0; layer < s.layers; ++layer)
			for (int64_t i = 0; i < s.hidden; ++i)
				g.values[static_cast<size_t>((layer * experts + e) * s.hidden + i)] =
				    static_cast<float>(v[static_cast<size_t>(layer * s.hidden + i)]);
	}
	return g;
}

std::vector<int64_t> degenerate_layers(const GateVectors& gates, double threshold) {
	std::vector<int64_t> out;
	for (int64_t layer = 0; layer < gates.layers; ++layer) {
		linalg::MatrixD rows(static_cast<size_t>(gates.experts), static_cast<size_t>(gates.hidden));
		std::copy(gates.row(layer, 0), gates.row(layer, 0) + gates.experts * gates.hidden, rows.data.begin());
		const auto s = linalg::svd(rows).S;
		if (s.empty() || !(s.back() * threshold >= s.front())) out.push_back(layer);
	}
	return out;
}

} // namespace weld::moe
