// Helpers of the model runtime tests: tiny models for the runtime and the independent NumPy
// reference forward pass (tests/nn_reference.py), which the tests run with /usr/bin/python3.
#pragma once

#include "test_util.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace weld::test {

inline bool have_numpy() {
	static const bool ok = std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
	return ok;
}

// The reference's JSON output for these sequences (see nn_reference.py); greedy_steps > 0 also
// gives the greedy continuations, hidden_states the residual stream entering each layer.
inline nlohmann::json run_reference(const std::filesystem::path& model, const std::vector<std::vector<int64_t>>& seqs,
                                    int greedy_steps = 0, bool hidden_states = false) {
	const std::string command = "/usr/bin/python3 " + std::string(WELD_SOURCE_DIR) + "/tests/nn_reference.py '" +
	                            model.string() + "' '" + nlohmann::json(seqs).dump() + "' " +
	                            std::to_string(greedy_steps) + (hidden_states ? " hidden" : "");
	const std::string out = test::command_output(command);
	return nlohmann::json::parse(out);
}

// A tiny model of the given shape written to dir; returns its tensors.
inline std::vector<NamedTensor> write_model(const std::filesystem::path& dir, const TinyLlamaSpec& spec,
                                            uint64_t seed = 7) {
	auto tensors = make_tiny_llama(spec, seed);
	write_tiny_llama(dir, spec, tensors);
	return tensors;
}

// Two token sequences and a tiny Llama with GQA (4 query heads sharing 2 key/value heads,
// head_dim 8): the function-preservation tests of weld protect and weld align.
inline const std::vector<std::vector<int64_t>> kReferenceSequences = {{1, 5, 9, 33, 2, 17, 60, 4, 8},
                                                                      {3, 3, 8, 40, 12, 0, 63}};

inline TinyLlamaSpec gqa_spec() {
	TinyLlamaSpec spec;
	spec.layers = 2;
	spec.hidden = 32;
	spec.heads = 4;
	spec.kv_heads = 2;
	return spec;
}

// The largest difference between two models' logits on kReferenceSequences, both computed by
// the NumPy reference forward pass.
inline double max_reference_logit_difference(const std::filesystem::path& a, const std::filesystem::path& b) {
	const auto x = run_reference(a, kReferenceSequences)["logits"], y = run_reference(b, kReferenceSequences)["logits"];
	double diff = 0;
	for (size_t s = 0; s < x.size(); s++)
		for (size_t p = 0; p < x[s].size(); p++)
			for (size_t v = 0; v < x[s][p].size(); v++)
				diff = std::max(diff, std::abs(x[s][p][v].get<double>() - y[s][p][v].get<double>()));
	return diff;
}

// Replaces keys of dir/config.json.
// q/k/v biases as Qwen2 has them (a fixed, non-zero pattern), added to a tiny Llama's tensors.
inline void add_qkv_biases(std::vector<weld::NamedTensor>& tensors) {
	const auto weights = tensors;
	for (const auto& t : weights)
		for (const char* proj : {"q_proj", "k_proj", "v_proj"})
			if (t.name.find(std::string(proj) + ".weight") != std::string::npos) {
				weld::NamedTensor bias{t.name.substr(0, t.name.size() - 6) + "bias", {t.shape[0]}, {}};
				for (uint64_t i = 0; i < t.shape[0]; ++i)
					bias.values.push_back(0.05f * static_cast<float>(i % 7) - 0.15f);
				tensors.push_back(bias);
			}
}

inline void edit_config(const std::filesystem::path& dir, const nlohmann::json& changes) {
	auto config = nlohmann::json::parse(read_file(dir / "config.json"));
	config.update(changes);
	write_file(dir / "config.json", config.dump(2));
}

} // namespace weld::test
