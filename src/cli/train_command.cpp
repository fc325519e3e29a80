// `weld train`: its options belong to weld-torch (cli/torch_program.h), which parses them, so
// they are forwarded as given; `weld train --help` lists them.
#include "cli/commands.h"
#include "cli/torch_program.h"

namespace weld::cli {

std::function<int()> add_train_command(CLI::App& app) {
	auto* cmd = app.add_subcommand("train", "Train or fine-tune a Llama-family model on CPU: AdamW, cosine "
	                                        "schedule, gradient clipping (libtorch); see weld train --help");
	cmd->prefix_command();
	cmd->set_help_flag();
	cmd->allow_extras();
	return [cmd]() -> int { run_torch_program("train", cmd->remaining()); };
}

} // namespace weld::cli
