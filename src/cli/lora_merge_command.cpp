// weld lora-merge ADAPTER... OUT: PEFT's add_weighted_adapter from the command line, and MWA over
// a training run's LoRA checkpoints.
#include "cli/commands.h"
#include "cli/thread_count.h"
#include "io/peft.h"
#include "lora/checkpoints.h"
#include "lora/weighted_adapter.h"
#include "methods/mwa.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <memory>
#include <thread>

namespace weld::cli {
namespace {

struct LoraMergeArgs {
	std::vector<std::string> paths; // the adapters, then OUT
	std::string combination_type = "svd", majority_sign = "total", mwa_metric = "loss";
	std::vector<double> weights;
	std::optional<double> density, svd_clamp;
	std::optional<size_t> svd_rank;
	double mwa_penalty = 1;
	uint64_t seed = 0;
	unsigned threads = std::max(1u, std::thread::hardware_concurrency());
	bool force = false, quiet = false;
};

// MWA's weights from each checkpoint's trainer state (lora/checkpoints.h).
std::vector<double> checkpoint_weights(const LoraMergeArgs& args, const std::vector<std::string>& dirs) {
	if (!args.weights.empty())
		throw Error("--combination-type mwa takes its weights from the checkpoints; drop --weights");
	if (args.mwa_metric != "loss" && args.mwa_metric != "step")
		throw Error(fmt::format("--mwa-metric '{}' is not loss or step", args.mwa_metric));
	const bool by_loss = args.mwa_metric == "loss";
	std::vector<double> metrics;
	for (const auto& dir : dirs) {
		const auto m = lora::read_checkpoint_metrics(dir);
		const auto value = by_loss ? m.loss : m.step;
		if (!value)
			throw Error(fmt::format("checkpoint {}: no training {} found ({}); MWA needs trainer_state.json in the "
			                        "checkpoint or the folder above it{}",
			                        dir, args.mwa_metric,
			                        m.state_file.empty() ? "no trainer_state.json" : "none in " + m.state_file.string(),
			                        by_loss ? "" : ", or a folder named checkpoint-N"));
		metrics.push_back(*value);
		if (!args.quiet) fmt::print(stderr, "weld: {}: {} {:g}\n", dir, args.mwa_metric, *value);
	}
	return mwa_weights(metrics, by_loss ? MwaMetric::Loss : MwaMetric::Step, args.mwa_penalty, "lora-merge");
}

int run(const LoraMergeArgs& args) {
	if (args.paths.size() < 2) throw Error("lora-merge needs at least one adapter and the output folder");
	const std::vector<std::string> dirs(args.paths.begin(), args.paths.end() - 1);
	const std::string out = args.paths.back();
	std::vector<PeftAdapter> adapters;
	for (const auto& dir : dirs)
		adapters.push_back(read_peft_adapter(dir));

	lora::CombinedAdapter combined;
	std::string description;
	if (args.combination_type == "mwa") {
		const auto weights = checkpoint_weights(args, dirs);
		combined = lora::average_adapters(adapters, weights, args.svd_rank, args.svd_clamp, args.threads);
		description = fmt::format("mwa (weights {:.4f})", fmt::join(weights, ", "));
	} else {
		lora::CombineOptions options;
		options.type = lora::parse_combination_type(args.combination_type);
		if (args.weights.empty()) throw Error("--weights is required (one per adapter, e.g. --weights 0.5,0.5)");
		options.weights = args.weights;
		options.density = args.density;
		options.majority_sign = lora::parse_majority_sign(args.majority_sign);
		options.svd_rank = args.svd_rank;
		options.svd_clamp = args.svd_clamp;
		options.seed = args.seed;
		combined = lora::combine_adapters(adapters, options, args.threads);
		description = args.combination_type;
	}
	lora::write_combined_adapter(combined, out, args.force);
	if (!args.quiet)
		fmt::print("weld: combined {} adapter{} by {} into {}: {} modules, rank {}\n", adapters.size(),
		           adapters.size() == 1 ? "" : "s", description, out, combined.modules.size(), combined.config.r);
	return 0;
}

} // namespace

std::function<int()> add_lora_merge_command(CLI::App& app) {
	auto args = std::make_shared<LoraMergeArgs>();
	auto* cmd = app.add_subcommand("lora-merge", "Combine LoRA adapters into one PEFT adapter as PEFT's "
	                                             "add_weighted_adapter does, or average a run's checkpoints (MWA)");
	cmd->add_option("paths", args->paths, "ADAPTER... OUT: adapter folders, then the output folder")
	    ->required()
	    ->expected(2, -1);
	cmd->add_option("--combination-type", args->combination_type,
	                "svd (default), linear, cat, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, "
	                "dare_ties_svd, magnitude_prune, magnitude_prune_svd, or mwa");
	cmd->add_option("--weights", args->weights, "one weight per adapter, comma-separated (not for mwa)")
	    ->delimiter(',');
	cmd->add_option("--density", args->density, "fraction of values kept by ties, dare_* and magnitude_prune*");
	cmd->add_option("--majority-sign-method", args->majority_sign, "total (default) or frequency (ties, dare_ties*)");
	cmd->add_option("--svd-rank", args->svd_rank, "rank of the svd types' result (default: the largest input rank)");
	cmd->add_option("--svd-clamp", args->svd_clamp, "clamp the svd factors to this quantile of their values");
	cmd->add_option("--seed", args->seed, "seed of DARE's masks (weld's own streams; default 0)");
	cmd->add_option("--mwa-metric", args->mwa_metric, "mwa: weigh checkpoints by training loss (default) or step");
	cmd->add_option("--mwa-penalty", args->mwa_penalty, "mwa: exponent sharpening the weights (default 1)")
	    ->check(CLI::NonNegativeNumber);
	cmd->add_option("--threads", args->threads, "modules combined at once (default: all cores; same bytes for any)")
	    ->check(CLI::PositiveNumber);
	cmd->add_flag("--force", args->force, "replace the output folder if it exists");
	cmd->add_flag("--quiet,-q", args->quiet, "print nothing but errors");
	return [args] {
		args->threads = capped_thread_count(args->threads);
		return run(*args);
	};
}

} // namespace weld::cli
