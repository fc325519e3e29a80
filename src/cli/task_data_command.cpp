// `weld task-data`: writes prompts of weld's procedural tasks as prompt/answer JSONL, the data
// files that `weld stats` and data-driven merges read.
#include "cli/commands.h"
#include "nn/tasks.h"
#include "util/error.h"

#include <fmt/format.h>

#include <memory>

namespace weld::cli {

namespace {
struct TaskDataArgs {
	std::string task, split = "train", out;
	uint64_t seed = 1;
	size_t count = 256;
};
} // namespace

std::function<int()> add_task_data_command(CLI::App& app) {
	auto a = std::make_shared<TaskDataArgs>();
	auto* cmd = app.add_subcommand("task-data", "Write the first N distinct prompts of one of weld's procedural tasks "
	                                            "as {\"prompt\", \"answer\"} JSONL (data for weld stats and "
	                                            "data-driven merges)");
	cmd->add_option("task", a->task, "task name (" + tasks::task_names() + ")")->required();
	cmd->add_option("-o,--out", a->out, "output .jsonl file")->required();
	cmd->add_option("--split", a->split, "train (never held out) or held-out (what weld eval --tasks scores)")
	    ->check(CLI::IsMember({"train", "held-out"}))
	    ->capture_default_str();
	cmd->add_option("--seed", a->seed, "seed of the task's stream (weld eval scores held-out seed 0)")
	    ->capture_default_str();
	cmd->add_option("--count", a->count, "prompts to write")->capture_default_str();
	return [a]() -> int {
		tasks::write_task_file(a->out, tasks::find_task(a->task), a->seed, a->count, a->split == "held-out");
		fmt::print("wrote {} prompts of {} ({}, seed {}) to {}\n", a->count, a->task, a->split, a->seed, a->out);
		return 0;
	};
}

} // namespace weld::cli
