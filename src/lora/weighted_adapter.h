// PEFT's add_weighted_adapter on whole adapters read from disk: every module any adapter adapts,
// combined by lora/combine.h, and the new adapter's config as PEFT sets it.
#pragma once

#include "io/peft.h"
#include "lora/combine.h"

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace weld::lora {

struct CombinedAdapter {
	PeftAdapterConfig config;
	std::vector<LoraModule> modules;
};

// The factors of a module as lora/combine.h takes them.
LoraFactors factors_of(const LoraModule& module);

// The adapters' module names in first-seen order, and which adapters (indices) hold each.
struct ModulesByName {
	std::vector<std::string> names;
	std::map<std::string, std::vector<size_t>, std::less<>> holders;
};
ModulesByName modules_by_name(const std::vector<PeftAdapter>& adapters);
// A module of `name` (shaped as `like`) holding the factors (scaling 1).
LoraModule module_of(const LoraFactors& factors, const LoraModule& like);

// Combines the adapters as add_weighted_adapter(adapters, weights, combination_type, ...) does:
// one adapter is combined linearly whatever the type (as PEFT does). The config is the first
// adapter's with r = lora_alpha = the new rank, rank_pattern and alpha_pattern emptied,
// use_rslora off (so the scaling is 1, as the combined factors assume) and target_modules the
// union of the adapters' (a list, sorted) or "(re1)|(re2)" for regex strings. Throws weld::Error
// for adapters weld cannot combine faithfully (lora_B biases, modules_to_save, a list mixed with
// a regex, modules of different shapes, options that do not fit).
// Modules are combined on `threads` threads; the result does not depend on their number.
CombinedAdapter combine_adapters(const std::vector<PeftAdapter>& adapters, CombineOptions options,
                                 unsigned threads = 1);

// MWA over a run's checkpoints: the exact Σ w_i s_i B_i A_i (as cat: rank Σ r_i), or with
// svd_rank its truncated SVD (scaled once, unlike PEFT's svd types), clamped as svd_clamp says.
CombinedAdapter average_adapters(const std::vector<PeftAdapter>& adapters, const std::vector<double>& weights,
                                 std::optional<size_t> svd_rank, std::optional<double> svd_clamp, unsigned threads = 1);

// Writes the combined adapter (float32 factors) as a PEFT adapter folder, all or nothing.
void write_combined_adapter(const CombinedAdapter& adapter, const std::filesystem::path& out, bool force);

} // namespace weld::lora
