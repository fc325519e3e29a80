// `weld stats`: its options belong to weld-torch (cli/torch_program.h), which parses them, so
// they are forwarded as given; `weld stats --help` lists them.
#include "cli/commands.h"
#include "cli/torch_program.h"

namespace weld::cli {

std::function<int()> add_stats_command(CLI::App& app) {
	auto* cmd = app.add_subcommand("stats", "Statistics of a model on data for data-driven merges: diagonal Fisher, "
	                                        "Gram matrices of linear-layer inputs, activation moments (libtorch); "
	                                        "see weld stats --help");
	cmd->prefix_command();
	cmd->set_help_flag();
	cmd->allow_extras();
	return [cmd]() -> int { run_torch_program("stats", cmd->remaining()); };
}

} // namespace weld::cli
