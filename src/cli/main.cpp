// weld: merge Hugging Face checkpoints from mergekit-style recipes.
#include "cli/commands.h"

#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <malloc.h>
#include <vector>

namespace {

// Streaming merges allocate and free the same few megabytes per tensor and thread (histograms,
// block scratch). glibc's defaults hand such blocks back to the kernel on free (mmap above
// 128 KiB, heap trimming), so every tensor faulted them in again and zeroed them: about 10% of
// a TIES merge's time at the 1B shape. Keep freed memory (up to 128 MiB per arena) for reuse.
void keep_freed_memory() {
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	mallopt(M_TRIM_THRESHOLD, 128 << 20);
}

} // namespace

int main(int argc, char** argv) {
	keep_freed_memory();
	CLI::App app{"weld: merge Hugging Face model checkpoints (mergekit recipes), streaming and fast"};
	app.require_subcommand(1);
	app.set_version_flag("--version", "weld 0.1.0");

	std::vector<std::pair<CLI::App*, std::function<int()>>> commands;
	for (auto add : {weld::cli::add_merge_command,          weld::cli::add_inspect_command,
	                 weld::cli::add_methods_command,        weld::cli::add_tall_command,
	                 weld::cli::add_eval_command,           weld::cli::add_train_command,
	                 weld::cli::add_stats_command,          weld::cli::add_search_command,
	                 weld::cli::add_task_data_command,      weld::cli::add_moe_command,
	                 weld::cli::add_apply_lora_command,     weld::cli::add_extract_lora_command,
	                 weld::cli::add_lora_merge_command,     weld::cli::add_rmm_command,
	                 weld::cli::add_example_command,        weld::cli::add_convert_command,
	                 weld::cli::add_analyze_command,        weld::cli::add_protect_command,
	                 weld::cli::add_verify_protect_command, weld::cli::add_align_command}) {
		auto run = add(app);
		commands.emplace_back(app.get_subcommands({}).back(), std::move(run));
	}
	try {
		app.parse(argc, argv);
	} catch (const CLI::ParseError& e) {
		return app.exit(e);
	}
	try {
		for (auto& [command, run] : commands)
			if (command->parsed()) return run();
	} catch (const std::exception& e) {
		std::fprintf(stderr, "weld: error: %s\n", e.what());
		return 1;
	}
	return 1;
}
