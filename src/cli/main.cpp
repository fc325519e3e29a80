// weld: merge Hugging Face checkpoints from mergekit-style recipes.
#include "cli/commands.h"

#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <vector>

int main(int argc, char** argv) {
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
