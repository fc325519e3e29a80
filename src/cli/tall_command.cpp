#include "cli/commands.h"
#include "exec/tall_store.h"
#include "util/size.h"

#include <fmt/format.h>

#include <memory>

namespace weld::cli {
namespace {

struct TallArgs {
	TallCompressOptions compress;
	TallExtractOptions extract;
	std::string out, shard_size = "5GB";
};

int run_compress(TallArgs& args) {
	args.compress.out = args.out;
	args.compress.max_shard_bytes = parse_size(args.shard_size, "--out-shard-size");
	const auto summary = tall_compress(args.compress);
	fmt::print("weld: stored {} fine-tunes of {} in {}: {} instead of {} ({:.1f}%)\n", args.compress.tasks.size(),
	           args.compress.base, args.out, format_size(summary.store_bytes), format_size(summary.expert_bytes),
	           summary.expert_bytes
	               ? 100.0 * static_cast<double>(summary.store_bytes) / static_cast<double>(summary.expert_bytes)
	               : 0.0);
	for (size_t k = 0; k < summary.kept_fraction.size(); k++)
		fmt::print("  task {} ({}): mask keeps {:.1f}% of the weights\n", k, args.compress.tasks[k],
		           100 * summary.kept_fraction[k]);
	return 0;
}

int run_extract(TallArgs& args) {
	args.extract.out = args.out;
	args.extract.max_shard_bytes = parse_size(args.shard_size, "--out-shard-size");
	tall_extract(args.extract);
	fmt::print("weld: reconstructed task '{}' into {}\n", args.extract.task, args.out);
	return 0;
}

} // namespace

std::function<int()> add_tall_command(CLI::App& app) {
	auto args = std::make_shared<TallArgs>();
	auto* tall = app.add_subcommand("tall", "Compress fine-tunes into a multi-task vector + TALL masks, and "
	                                        "reconstruct any one of them (Wang et al. 2024)");
	tall->require_subcommand(1);
	auto* compress = tall->add_subcommand("compress", "Store fine-tunes of one base as tau_MTL + one bit per weight "
	                                                  "and task");
	compress->add_option("--base", args->compress.base, "the base model (folder or HF repo id)")->required();
	compress->add_option("models", args->compress.tasks, "the fine-tuned models")->required();
	compress->add_option("--out,-o", args->out, "the store folder to write")->required();
	compress->add_option("--tall-lambda", args->compress.tall_lambda,
	                     "mask threshold: keep weight j for task t where |tau_t| > lambda |tau_MTL - tau_t| (0.6)");
	compress->add_flag("--force", args->compress.force, "replace the store if it exists");
	compress->add_option("--out-shard-size", args->shard_size, "largest shard (default 5GB)");

	auto* extract = tall->add_subcommand("extract", "Reconstruct one fine-tune from a store as a model folder");
	extract->add_option("store", args->extract.store, "a store written by `weld tall compress`")->required();
	extract->add_option("task", args->extract.task, "the task: its model reference as compressed, or its index")
	    ->required();
	extract->add_option("out", args->out, "the model folder to write")->required();
	extract->add_option("--base", args->extract.base, "the base model, if it moved since compression");
	extract->add_flag("--force", args->extract.force, "replace the output folder if it exists");
	extract->add_option("--out-shard-size", args->shard_size, "largest shard (default 5GB)");
	return [args, compress] { return compress->parsed() ? run_compress(*args) : run_extract(*args); };
}

} // namespace weld::cli
