#include "cli/commands.h"
#include "cli/statistics_cache.h"
#include "cli/thread_count.h"
#include "cli/torch_program.h"
#include "exec/merge.h"
#include "io/gguf_model.h"
#include "io/output_folder.h"
#include "methods/method.h"
#include "plan/plan.h"
#include "plan/recipe.h"
#include "util/error.h"
#include "util/size.h"

#include <fmt/format.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <thread>
#include <unistd.h>

namespace weld::cli {
namespace {

struct MergeArgs {
	std::string recipe, out, memory_budget, shard_size = "5GB";
	std::string format, gguf_type; // "" : safetensors, or gguf when out ends in .gguf
	unsigned threads = std::max(1u, std::thread::hardware_concurrency());
	uint64_t seed = 0;
	bool force = false, dry_run = false, quiet = false, verbose = false, allow_nonfinite = false, resume = false;
};

void on_signal(int) {
	request_cancel();
}

int merge(const MergeArgs& args, const Distributed& dist) {
	// Ctrl-C stops at the next tensor and removes the partial output instead of leaving it.
	std::signal(SIGINT, on_signal);
	std::signal(SIGTERM, on_signal);
	MergeOptions options;
	dist.agree([&] { // a bad option is bad on every rank: say it once
		options.recipe_path = args.recipe;
		options.out_dir = args.out;
		options.force = args.force;
		options.dry_run = args.dry_run;
		options.resume = args.resume && !args.dry_run;
		options.seed = args.seed;
		options.gguf = args.format == "gguf" || (args.format.empty() && args.out.ends_with(".gguf"));
		if (!args.gguf_type.empty()) {
			if (!options.gguf) throw Error("--gguf-type: only with --format gguf");
			options.gguf_type = parse_gguf_type(args.gguf_type, "--gguf-type");
		}
		options.exec.threads = capped_thread_count(args.threads, "--threads", args.quiet || !dist.is_root());
		options.exec.memory_budget =
		    args.memory_budget.empty() ? default_memory_budget() : parse_size(args.memory_budget, "--memory-budget");
		options.exec.max_shard_bytes = parse_size(args.shard_size, "--out-shard-size");
		options.exec.progress = !args.quiet; // a line in place on a terminal, else plain lines (util/progress.h)
		options.exec.verbose = args.verbose && !args.quiet;
		options.exec.allow_nonfinite = args.allow_nonfinite;
		options.distributed = &dist;
		// Statistics from `data:` files: computed once, by a single process (a distributed merge
		// refuses them in the plan).
		if (dist.size() == 1 && !args.dry_run)
			options.computed_statistics = compute_recipe_statistics(args.recipe, args.out, args.quiet);
	});

	const auto summary = run_merge(options);
	if (summary.rank != 0) return 0; // rank 0 reports for all
	if (!args.quiet)
		for (const auto& warning : summary.warnings)
			fmt::print(stderr, "weld: warning: {}\n", warning);
	if (args.dry_run) {
		fmt::print("{}", summary.plan_text);
		return 0;
	}
	if (!args.quiet)
		fmt::print("weld: merged {} tensors ({}) into {} ({} shard{}{}) in {:.2f}s\n", summary.tensors,
		           format_size(summary.bytes_written), args.out, summary.shards, summary.shards == 1 ? "" : "s",
		           args.resume ? fmt::format(", {} kept from the interrupted run", summary.resumed_shards) : "",
		           summary.seconds);
	// How the work divided; bench/speed/run parses these lines.
	if (!args.quiet && (summary.ranks.size() > 1 || args.verbose)) {
		std::fflush(stdout);
		for (size_t r = 0; r < summary.ranks.size(); r++)
			fmt::print(stderr, "weld: rank {} of {}: {} tensors, read {} bytes, wrote {} bytes\n", r,
			           summary.ranks.size(), summary.ranks[r].tensors, summary.ranks[r].bytes_read,
			           summary.ranks[r].bytes_written);
	}
	return 0;
}

// Methods that learn from data run in weld-torch (the model runtime), which takes these options.
bool learns_from_data(const std::string& recipe_path) {
	try {
		const auto recipe = parse_recipe(read_text_file(recipe_path), recipe_path);
		const auto* method = find_method(recipe.merge_method);
		return method && learns_from_data(method->info(), recipe);
	} catch (const Error&) {
		return false; // run_merge reports it
	}
}

std::vector<std::string> learned_merge_words(const MergeArgs& args) {
	if (args.dry_run) throw Error("--dry-run: a method that learns from data has no plan before it has learned");
	if (args.resume) throw Error("--resume: a method that learns from data cannot continue an interrupted merge yet");
	if (!args.format.empty() && args.format != "safetensors")
		throw Error("--format: a method that learns from data writes safetensors only");
	std::vector<std::string> w = {args.recipe, args.out,
	                              "--threads", std::to_string(capped_thread_count(args.threads, "--threads", true)),
	                              "--seed",    std::to_string(args.seed)};
	if (args.force) w.push_back("--force");
	if (args.quiet) w.push_back("--quiet");
	return w;
}

int run(const MergeArgs& args) {
	if (learns_from_data(args.recipe)) run_torch_program("merge", learned_merge_words(args));
	// Under mpirun each process is one rank of a distributed merge; otherwise a job of one.
	const Distributed dist = Distributed::join();
	try {
		return merge(args, dist);
	} catch (const AgreedError&) {
		if (!dist.is_root()) return 1; // rank 0 prints the message for all
		throw;
	} catch (const std::exception& e) {
		if (dist.size() == 1) throw;
		// Not agreed, so the other ranks may be waiting for this one: end them all.
		fmt::print(stderr, "weld: error: rank {}: {}\n", dist.rank(), e.what());
		dist.abort(1);
	}
}

} // namespace

std::function<int()> add_merge_command(CLI::App& app) {
	auto args = std::make_shared<MergeArgs>();
	auto* cmd = app.add_subcommand("merge", "Merge models as a recipe says and write a Hugging Face model folder");
	cmd->footer("Distributed: `mpirun -np K weld merge RECIPE OUT` splits the output shards among K processes "
	            "(each reads only the inputs of its shards; the output is byte-identical to one process's). "
	            "Ranks beyond the number of shards have nothing to do; see --out-shard-size.");
	cmd->add_option("recipe", args->recipe, "mergekit-style YAML recipe")->required();
	cmd->add_option("out", args->out, "output folder (written whole, or not at all)")->required();
	cmd->add_flag("--force", args->force, "replace the output folder if it exists");
	cmd->add_flag("--resume", args->resume,
	              "continue the merge of OUT that a killed run left in its temporary folder, keeping the shards "
	              "it completed (same recipe and options; not under mpirun)");
	cmd->add_option("--format", args->format,
	                "safetensors (a model folder) or gguf (one llama.cpp file; default when OUT ends in .gguf)")
	    ->check(CLI::IsMember({"safetensors", "gguf"}));
	cmd->add_option("--gguf-type", args->gguf_type,
	                "type of the GGUF weights: f32, f16, bf16 or q8_0 (default: the merge's output dtype)");
	cmd->add_flag("--dry-run", args->dry_run,
	              "validate the recipe and inputs, print each output tensor's sources and parameters, write nothing");
	cmd->add_option("--threads", args->threads, "worker threads (default: all cores)")->check(CLI::PositiveNumber);
	cmd->add_option("--memory-budget", args->memory_budget,
	                "most memory for mapped input pages and working buffers, e.g. 4GB (default: a quarter of RAM)");
	cmd->add_option("--out-shard-size", args->shard_size,
	                "largest output shard, e.g. 500MB, 2GB (default 5GB); under mpirun each rank writes whole "
	                "shards, so use at least as many shards as ranks");
	cmd->add_option("--seed", args->seed, "seed for random methods (DARE); same seed, same bytes (default 0)");
	cmd->add_flag("--quiet,-q", args->quiet, "print nothing but errors");
	cmd->add_flag("--allow-nonfinite", args->allow_nonfinite,
	              "merge inputs that hold NaN or Inf (refused by default, naming model, tensor and element)");
	cmd->add_flag("--verbose,-v", args->verbose, "say how each tensor was computed (e.g. which SVD path)");
	return [args] { return run(*args); };
}

} // namespace weld::cli
