// The options of `weld moe`, shared by the weld CLI and weld-torch: weld runs the gate modes
// that need no model (cheap_embed, random) itself and hands the hidden ones to weld-torch.
#pragma once

#include "moe/moe_build.h"
#include "util/size.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <string>
#include <vector>

namespace weld::cli {

struct MoeArgs {
	std::string config, out, shard_size = "5GB";
	uint64_t seed = 0;
	bool force = false, allow_all_same = false, quiet = false;
};

inline void add_moe_options(CLI::App& cmd, MoeArgs& args) {
	cmd.add_option("config", args.config, "mergekit-moe configuration (YAML)")->required();
	cmd.add_option("out", args.out, "output model folder")->required();
	cmd.add_flag("--force", args.force, "replace OUT if it exists");
	cmd.add_flag("--i-understand-this-is-not-useful-without-training", args.allow_all_same,
	             "allow every expert to be the same model (as mergekit-moe)");
	cmd.add_option("--seed", args.seed, "seed of gate_mode random/uniform_random and noise_scale")
	    ->capture_default_str();
	cmd.add_option("--out-shard-size", args.shard_size, "largest output shard")->capture_default_str();
	cmd.add_flag("--quiet", args.quiet, "no summary or warnings");
}

inline std::vector<std::string> moe_words(const MoeArgs& args) {
	std::vector<std::string> w = {args.config,        args.out,       "--seed", std::to_string(args.seed),
	                              "--out-shard-size", args.shard_size};
	if (args.force) w.push_back("--force");
	if (args.allow_all_same) w.push_back("--i-understand-this-is-not-useful-without-training");
	if (args.quiet) w.push_back("--quiet");
	return w;
}

inline int run_moe(const MoeArgs& args, const moe::PromptStates& prompt_states) {
	moe::MoeOptions options;
	options.config_path = args.config;
	options.out = args.out;
	options.force = args.force;
	options.allow_all_same = args.allow_all_same;
	options.seed = args.seed;
	options.max_shard_bytes = parse_size(args.shard_size, "--out-shard-size");
	const auto summary = moe::build_moe(options, prompt_states);
	if (args.quiet) return 0;
	for (const auto& warning : summary.warnings)
		fmt::print(stderr, "weld: warning: {}\n", warning);
	fmt::print("weld: wrote a {} mixture of experts ({} tensors, {}) to {}\n",
	           moe::architecture_name(summary.architecture), summary.tensors, format_size(summary.bytes), args.out);
	return 0;
}

} // namespace weld::cli
