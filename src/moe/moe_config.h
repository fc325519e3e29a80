// mergekit-moe's configuration file (mergekit/moe/config.py), read unchanged: a base model whose
// attention, norms and embeddings the mixture keeps, and dense expert models whose MLPs become
// its experts, each routed to by prompts that show what it is good at.
#pragma once

#include "io/dtype.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace weld::moe {

// How the router rows are initialized (mergekit/moe/router.py):
//   hidden, hidden_last: the base model's residual stream entering each layer at the prompt's
//     last token, averaged over the prompts;
//   hidden_avg: the same averaged over the prompt's tokens first;
//   cheap_embed: the sum of the prompts' token embeddings, normalized, the same for every layer;
//   random: N(0, 1); uniform_random: U(-1/sqrt(hidden), 1/sqrt(hidden)), torch.nn.Linear's init.
enum class GateMode { Hidden, HiddenAvg, CheapEmbed, Random, UniformRandom };

struct ExpertSpec {
	std::string source_model;
	std::vector<std::string> positive_prompts, negative_prompts;
	std::optional<double> noise_scale;    // N(0, noise_scale²) added to each of its MLP weights
	std::optional<double> residual_scale; // multiplies its down projection
};

struct MoeConfig {
	std::string base_model;
	std::vector<ExpertSpec> experts;
	std::string gate_mode_name = "hidden";
	GateMode gate_mode = GateMode::Hidden;
	std::optional<DType> dtype;
	int64_t experts_per_token = 2;
	std::vector<ExpertSpec> shared_experts;
	std::string architecture; // "" or a prefix of an output architecture's name (mixtral, qwen, ...)
	std::string text;         // the file as read
	std::vector<std::string> warnings;
};

// Parses the YAML text; `label` (the file) starts every error. Keys mergekit does not know are
// ignored as mergekit ignores them, with a warning each.
MoeConfig parse_moe_config(const std::string& yaml_text, const std::string& label);

// mergekit's is_bad_config: at least one expert per token and as many experts as that; outside
// the random modes every expert has positive prompts, not all experts have the same prompts, and
// (unless allow_all_same, mergekit's --i-understand-this-is-not-useful-without-training) not
// all experts are the same model. Throws weld::Error.
void check_moe_config(const MoeConfig& config, bool allow_all_same, const std::string& label);

// Whether the gate mode runs the base model (weld-torch computes those).
bool needs_hidden_states(GateMode mode);
// Whether the gate mode reads the prompts.
bool uses_prompts(GateMode mode);

} // namespace weld::moe
