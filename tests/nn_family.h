// A tiny model family for the tests of the merges that learn from data and of weld search: a
// base created from a config.json text (seed 3) in dir/base, and fine-tunes dir/e0, dir/e1, ...,
// each the base plus N(0, sd²) noise drawn from its own seed (first_seed + k). Includes ATen.
#pragma once

#include "nn/llama.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <filesystem>
#include <string>

namespace weld::test {

// The config.json of the learned-merge tests' family: a 2-layer Llama of hidden size 8 with a
// byte vocabulary, initialized wide (0.3) so that merges differ visibly.
inline const char* kLearnedFamilyConfig =
    R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 258, "hidden_size": 8,
  "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
  "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "initializer_range": 0.3})";

inline void write_noisy_family(const std::filesystem::path& dir, const std::string& config, int experts,
                               uint64_t first_seed, double sd) {
	nn::LlamaModel::create(config, "tiny", 3).save(dir / "base");
	for (int k = 0; k < experts; ++k) {
		auto expert = nn::LlamaModel::load(dir / "base");
		auto gen = at::make_generator<at::CPUGeneratorImpl>(first_seed + static_cast<uint64_t>(k));
		for (auto& [name, p] : expert.parameters())
			p.add_(at::normal(0.0, sd, p.sizes(), gen, p.options()));
		expert.save(dir / fmt::format("e{}", k));
	}
}

} // namespace weld::test
