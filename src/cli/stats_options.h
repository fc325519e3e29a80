// The options of `weld stats` (parsed by weld-torch; weld forwards them as given).
#pragma once

#include "stats/statistics.h"

#include <CLI/CLI.hpp>

#include <string>

namespace weld::cli {

struct StatsArgs {
	stats::StatsJob job;
	std::string model, data, out, kind;
	bool quiet = false; // no progress lines
};

inline void add_stats_options(CLI::App& cmd, StatsArgs& a) {
	cmd.add_option("model", a.model, "model folder or Hugging Face repo id in the local cache")->required();
	cmd.add_option("--data", a.data,
	               "data file: .jsonl of {\"prompt\", \"answer\"} (Fisher on the answer tokens) or {\"input_ids\"}, "
	               "or text lines (byte tokens)")
	    ->required();
	cmd.add_option("--kind", a.kind,
	               "fisher (diagonal empirical Fisher), gram (XᵀX/N of every linear layer's "
	               "inputs, for RegMean) or activations (input/output means and second moments)")
	    ->required();
	cmd.add_option("-o,--out", a.out, "output statistics folder (model.safetensors with the kind in its metadata)")
	    ->required();
	cmd.add_option("--max-tokens", a.job.max_tokens, "stop after this many tokens (0: the whole file)")
	    ->capture_default_str();
	cmd.add_option("--batch-size", a.job.batch_size, "sequences per forward pass")->capture_default_str();
	cmd.add_option("--threads", a.job.threads, "CPU threads (default: all cores)");
	cmd.add_flag("--force", a.job.force, "replace an existing output folder");
	cmd.add_flag("--quiet,-q", a.quiet, "no progress lines on stderr");
}

} // namespace weld::cli
