// The router rows of a mixture built by weld moe, per gate mode as mergekit/moe/router.py
// computes them (see GateMode in moe_config.h).
#pragma once

#include "moe/moe_build.h"
#include "moe/moe_config.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace weld::moe {

// Router rows of every layer: values[(layer * experts + expert) * hidden + i].
struct GateVectors {
	int64_t layers = 0, experts = 0, hidden = 0;
	std::vector<float> values;

	const float* row(int64_t layer, int64_t expert) const {
		return values.data() + (layer * experts + expert) * hidden;
	}
};

struct GateSources {
	int64_t layers = 0, hidden = 0;
	std::function<std::vector<int64_t>(const std::string&)> tokenize; // text -> ids, BOS first
	std::function<std::vector<float>()> embedding; // cheap_embed: the base's [vocab][hidden] embeddings
	std::function<std::vector<float>(const std::vector<int64_t>& ids, bool average)> prompt_states; // hidden modes
	uint64_t seed = 0;                                                                              // random modes
};

// One row per gated expert (the routed experts, then the shared ones that have a gate). For the
// prompt modes each row is v(positive) - v(negative), normalized to length 1 (norms under 1e-8
// count as 1e-8), where v is
//   cheap_embed: the sum of the embeddings of every token of the prompts, normalized, every layer;
//   hidden modes: the mean over the prompts of prompt_states;
// and v(negative) = 0 without negative prompts. random: N(0, 1), uniform_random:
// U(-1/sqrt(hidden), 1/sqrt(hidden)), drawn from weld's counter-based generator at the seed.
GateVectors compute_gate_vectors(GateMode mode, const std::vector<const ExpertSpec*>& gated,
                                 const GateSources& sources);

// Layers whose rows have a condition number (largest over smallest singular value) above
// threshold: mergekit warns that their experts will be chosen alike.
std::vector<int64_t> degenerate_layers(const GateVectors& gates, double threshold = 5.0);

} // namespace weld::moe
