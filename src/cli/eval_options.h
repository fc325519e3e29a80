// The options of `weld eval`, shared by the weld CLI (which parses them, then hands over to
// weld-torch, cli/torch_program.h) and weld-torch itself (which links libtorch).
#pragma once

#include "nn/tasks.h"

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace weld::cli {

struct EvalArgs {
	std::string model;
	std::string data;
	std::vector<std::string> tasks;
	size_t held_out = 200;
	uint64_t task_seed = 0;
	std::string dtype = "float32";
	int threads = 0;
	bool json = false;
	bool chat = false;
	bool quiet = false; // no progress lines
};

inline void add_eval_options(CLI::App& cmd, EvalArgs& args) {
	cmd.add_option("model", args.model, "model folder or Hugging Face repo id in the local cache")->required();
	auto* data = cmd.add_option("--data", args.data,
	                            "text file (one sequence per line; the model's tokenizer.json, else byte tokens), or "
	                            ".jsonl of {\"input_ids\": [...]} "
	                            "or {\"prompt\": ..., \"answer\": ...}");
	auto* tasks =
	    cmd.add_option("--tasks", args.tasks,
	                   "weld's procedural tasks (" + tasks::task_names() + ", or all): exact match on held-out prompts")
	        ->delimiter(',');
	data->excludes(tasks);
	tasks->excludes(data);
	cmd.add_option("--held-out", args.held_out, "with --tasks: prompts per task")->capture_default_str();
	cmd.add_option("--task-seed", args.task_seed, "with --tasks: seed of the held-out prompts")->capture_default_str();
	cmd.add_option("--dtype", args.dtype, "computation type: float32 or bfloat16")->capture_default_str();
	cmd.add_option("--threads", args.threads, "CPU threads (default: all cores)");
	cmd.add_flag("--chat", args.chat,
	             "prompt/answer files: each prompt as a user message through the model's chat template "
	             "(add_generation_prompt) before tokenizing");
	cmd.add_flag("--json", args.json,
	             "print one JSON object: {\"perplexity\", \"tokens\"}, {\"accuracy\", \"n\"}, or with --tasks "
	             "{\"accuracy\", \"n\", \"tasks\": {name: {\"accuracy\", \"n\"}}}");
	cmd.add_flag("--quiet,-q", args.quiet, "no progress lines on stderr");
	cmd.callback([&cmd, &args] {
		if (args.data.empty() && args.tasks.empty()) throw CLI::RequiredError("--data or --tasks");
	});
}

// The parsed options as words again, for weld-torch.
inline std::vector<std::string> eval_words(const EvalArgs& args) {
	std::vector<std::string> w = {args.model, "--dtype", args.dtype, "--threads", std::to_string(args.threads)};
	if (!args.data.empty()) w.insert(w.end(), {"--data", args.data});
	if (!args.tasks.empty()) {
		std::string joined;
		for (const auto& t : args.tasks)
			joined += (joined.empty() ? "" : ",") + t;
		w.insert(w.end(), {"--tasks", joined, "--held-out", std::to_string(args.held_out), "--task-seed",
		                   std::to_string(args.task_seed)});
	}
	if (args.json) w.push_back("--json");
	if (args.chat) w.push_back("--chat");
	if (args.quiet) w.push_back("--quiet");
	return w;
}

} // namespace weld::cli
