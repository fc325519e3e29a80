#include "cli/commands.h"
#include "exec/merge.h"
#include "util/size.h"

#include <fmt/format.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <thread>
#include <unistd.h>

namespace weld::cli {
namespace {

uint64_t default_memory_budget() {
	const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || page_size <= 0) return 2ull << 30;
	return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) / 4;
}

struct MergeArgs {
	std::string recipe, out, memory_budget, shard_size = "5GB";
	unsigned threads = std::max(1u, std::thread::hardware_concurrency());
	uint64_t seed = 0;
	bool force = false, dry_run = false, quiet = false, verbose = false;
};

void on_signal(int) {
	request_cancel();
}

int run(const MergeArgs& args) {
	// Ctrl-C stops at the next tensor and removes the partial output instead of leaving it.
	std::signal(SIGINT, on_signal);
	std::signal(SIGTERM, on_signal);
	MergeOptions options;
	options.recipe_path = args.recipe;
	options.out_dir = args.out;
	options.force = args.force;
	options.dry_run = args.dry_run;
	options.seed = args.seed;
	options.exec.threads = args.threads;
	options.exec.memory_budget =
	    args.memory_budget.empty() ? default_memory_budget() : parse_size(args.memory_budget, "--memory-budget");
	options.exec.max_shard_bytes = parse_size(args.shard_size, "--out-shard-size");
	options.exec.progress = !args.quiet && isatty(STDERR_FILENO);
	options.exec.verbose = args.verbose && !args.quiet;

	const auto summary = run_merge(options);
	if (!args.quiet)
		for (const auto& warning : summary.warnings)
			fmt::print(stderr, "weld: warning: {}\n", warning);
	if (args.dry_run) {
		fmt::print("{}", summary.plan_text);
		return 0;
	}
	if (!args.quiet)
		fmt::print("weld: merged {} tensors ({}) into {} ({} shard{}) in {:.2f}s\n", summary.tensors,
		           format_size(summary.bytes_written), args.out, summary.shards, summary.shards == 1 ? "" : "s",
		           summary.seconds);
	return 0;
}

} // namespace

std::function<int()> add_merge_command(CLI::App& app) {
	auto args = std::make_shared<MergeArgs>();
	auto* cmd = app.add_subcommand("merge", "Merge models as a recipe says and write a Hugging Face model folder");
	cmd->add_option("recipe", args->recipe, "mergekit-style YAML recipe")->required();
	cmd->add_option("out", args->out, "output folder (written whole, or not at all)")->required();
	cmd->add_flag("--force", args->force, "replace the output folder if it exists");
	cmd->add_flag("--dry-run", args->dry_run,
	              "validate the recipe and inputs, print each output tensor's sources and parameters, write nothing");
	cmd->add_option("--threads", args->threads, "worker threads (default: all cores)")->check(CLI::PositiveNumber);
	cmd->add_option("--memory-budget", args->memory_budget,
	                "most working-buffer memory in flight, e.g. 4GB (default: a quarter of RAM)");
	cmd->add_option("--out-shard-size", args->shard_size, "largest output shard, e.g. 500MB, 2GB (default 5GB)");
	cmd->add_option("--seed", args->seed, "seed for random methods (DARE); same seed, same bytes (default 0)");
	cmd->add_flag("--quiet,-q", args->quiet, "print nothing but errors");
	cmd->add_flag("--verbose,-v", args->verbose, "say how each tensor was computed (e.g. which SVD path)");
	return [args] { return run(*args); };
}

} // namespace weld::cli
