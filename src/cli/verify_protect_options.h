// `weld verify-protect ORIGINAL PROTECTED`: options shared by weld and weld-torch, which runs it.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace weld::cli {

struct VerifyProtectArgs {
	std::string original, protected_model;
	size_t sequences = 8, length = 32;
	uint64_t seed = 0;
	int threads = 0;
	bool json = false;
};

inline void add_verify_protect_options(CLI::App& cmd, VerifyProtectArgs& a) {
	cmd.add_option("original", a.original, "the model before weld protect")->required();
	cmd.add_option("protected", a.protected_model, "its protected copy")->required();
	cmd.add_option("--sequences", a.sequences, "random token sequences (default 8)");
	cmd.add_option("--length", a.length, "tokens per sequence (default 32)");
	cmd.add_option("--seed", a.seed, "seed of the token ids");
	cmd.add_option("--threads", a.threads, "CPU threads (default: all cores)");
	cmd.add_flag("--json", a.json, "print JSON");
}

inline std::vector<std::string> verify_protect_words(const VerifyProtectArgs& a) {
	std::vector<std::string> w = {a.original,  a.protected_model,        "--sequences", std::to_string(a.sequences),
	                              "--length",  std::to_string(a.length), "--seed",      std::to_string(a.seed),
	                              "--threads", std::to_string(a.threads)};
	if (a.json) w.push_back("--json");
	return w;
}

} // namespace weld::cli
