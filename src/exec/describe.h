// What `weld inspect --json` and `weld methods --json` print, as JSON values: the CLI prints
// them (and its text output reads the same values), the Python module returns them as dicts.
#pragma once

#include "io/peft.h"
#include "lora/overlap.h"
#include "methods/method.h"

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace weld {

// A model folder (or a Hugging Face repo id in the local cache): path, architecture, layer and
// vocabulary sizes where config.json has them, parameter count, bytes, and every tensor's name,
// dtype, shape and shard file.
nlohmann::ordered_json describe_model(const std::string& reference);

// LoRA adapters and the pairwise overlap of their ΔW = B·A column spaces, per module.
struct AdapterComparison {
	std::vector<PeftAdapter> adapters;
	std::vector<lora::PairOverlap> overlaps;
	// Over the pairs where both updates are non-zero: their number, mean overlap and mean
	// largest cosine, and which pair overlaps most (an index into overlaps).
	size_t pairs = 0;
	double mean_overlap = 0, mean_max_cosine = 0;
	std::optional<size_t> most;
};
AdapterComparison compare_adapters(const std::vector<std::string>& paths);
nlohmann::ordered_json describe_adapters(const AdapterComparison& comparison);

// What `weld inspect PATH...` looks at: true when every path is an adapter folder (with
// adapter_config.json), false for a single model folder; throws weld::Error otherwise.
bool inspects_adapters(const std::vector<std::string>& paths);

// `weld inspect --json PATH...`: describe_adapters or describe_model, as inspects_adapters says.
nlohmann::ordered_json describe_inspected(const std::vector<std::string>& paths);

// A method's declared parameters and properties; describe_methods: every method by name.
nlohmann::ordered_json describe_method(const MethodInfo& info);
nlohmann::ordered_json describe_methods();

} // namespace weld
