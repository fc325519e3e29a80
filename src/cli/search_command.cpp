// `weld search`: its options belong to weld-torch (cli/torch_program.h), which evaluates the
// candidates in process; they are forwarded as given, and `weld search --help` lists them.
#include "cli/commands.h"
#include "cli/torch_program.h"

namespace weld::cli {

std::function<int()> add_search_command(CLI::App& app) {
	auto* cmd = app.add_subcommand("search", "Search recipe parameters that maximize weld eval measures (cma_es, m2n2, "
	                                         "map, bayes_mo, sweep), on one process or many (mpirun); see weld search "
	                                         "--help");
	cmd->prefix_command();
	cmd->set_help_flag();
	cmd->allow_extras();
	return [cmd]() -> int { run_torch_program("search", cmd->remaining()); };
}

} // namespace weld::cli
