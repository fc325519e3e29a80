// `weld protect MODEL OUT --seed S`: MergeLock, the same function in weights that merge with nothing.
#include "align/protect.h"
#include "cli/commands.h"
#include "cli/torch_program.h"
#include "cli/verify_protect_options.h"
#include "util/size.h"

#include <fmt/format.h>

#include <memory>

namespace weld::cli {

std::function<int()> add_protect_command(CLI::App& app) {
	struct Args {
		ProtectOptions options;
		std::string shard_size = "5GB";
		bool quiet = false;
	};
	auto args = std::make_shared<Args>();
	auto* cmd = app.add_subcommand("protect", "MergeLock: rewrite a Llama-family model's attention with random "
	                                          "function-preserving transforms so that merges with it fail");
	cmd->add_option("model", args->options.model, "model folder (or Hugging Face cache id)")->required();
	cmd->add_option("out", args->options.out, "output folder")->required();
	cmd->add_option("--seed", args->options.seed, "seed of the transforms (keep it secret: it is the key)");
	cmd->add_option("--out-shard-size", args->shard_size, "largest output shard (default 5GB)");
	cmd->add_flag("--force", args->options.force, "replace the output folder if it exists");
	cmd->add_flag("--quiet,-q", args->quiet, "print nothing but errors");
	return [args] {
		args->options.max_shard_bytes = parse_size(args->shard_size, "--out-shard-size");
		protect_model(args->options);
		if (!args->quiet) fmt::print("weld: protected {} into {}\n", args->options.model, args->options.out);
		return 0;
	};
}

} // namespace weld::cli

namespace weld::cli {

std::function<int()> add_verify_protect_command(CLI::App& app) {
	auto args = std::make_shared<VerifyProtectArgs>();
	auto* cmd = app.add_subcommand("verify-protect", "The largest logit difference between a model and its protected "
	                                                 "copy on random token sequences (libtorch)");
	add_verify_protect_options(*cmd, *args);
	return [args]() -> int { run_torch_program("verify-protect", verify_protect_words(*args)); };
}

} // namespace weld::cli
