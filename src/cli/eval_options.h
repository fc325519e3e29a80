// The options of `weld eval`, shared by the weld CLI (which parses them, then hands over to the
// weld-eval program) and weld-eval itself (which links libtorch). Keeping libtorch out of weld
// keeps every other command light: loading it costs about 0.4 s and 150 MB per start.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace weld::cli {

struct EvalArgs {
	std::string model;
	std::string data;
	std::string dtype = "float32";
	int threads = 0;
	bool json = false;
};

inline void add_eval_options(CLI::App& cmd, EvalArgs& args) {
	cmd.add_option("model", args.model, "model folder or Hugging Face repo id in the local cache")->required();
	cmd.add_option("--data", args.data,
	               "text file (one sequence per line, byte tokens), or .jsonl of {\"input_ids\": [...]} or "
	               "{\"prompt\": ..., \"answer\": ...}")
	    ->required();
	cmd.add_option("--dtype", args.dtype, "computation type: float32 or bfloat16")->capture_default_str();
	cmd.add_option("--threads", args.threads, "CPU threads (default: all cores)");
	cmd.add_flag("--json", args.json, "print one JSON object: {\"perplexity\", \"tokens\"} or {\"accuracy\", \"n\"}");
}

} // namespace weld::cli
