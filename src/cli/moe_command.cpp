// `weld moe CONFIG OUT`: mergekit-moe. The hidden gate modes run the base model, in weld-torch.
#include "cli/commands.h"
#include "cli/moe_options.h"
#include "cli/torch_program.h"
#include "io/output_folder.h"
#include "moe/moe_config.h"

#include <memory>

namespace weld::cli {

std::function<int()> add_moe_command(CLI::App& app) {
	auto args = std::make_shared<MoeArgs>();
	auto* cmd = app.add_subcommand("moe", "Build a Mixtral or Qwen2-MoE mixture of experts from dense models "
	                                      "(mergekit-moe configurations)");
	add_moe_options(*cmd, *args);
	return [args]() -> int {
		const auto config = moe::parse_moe_config(read_text_file(args->config), args->config);
		if (moe::needs_hidden_states(config.gate_mode)) run_torch_program("moe", moe_words(*args));
		return run_moe(*args, {});
	};
}

} // namespace weld::cli
