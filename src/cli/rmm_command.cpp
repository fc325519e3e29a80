// weld rmm build INPUT... OUT / weld rmm revert RMM I DEST: Reversible Model Merging (lora/rmm.h).
#include "cli/commands.h"
#include "lora/rmm_folder.h"
#include "util/error.h"

#include <fmt/format.h>

#include <memory>

namespace weld::cli {
namespace {

struct RmmArgs {
	std::vector<std::string> build_paths; // inputs, then OUT
	size_t rank = 2;
	std::string base;
	std::optional<size_t> svd_rank;
	std::string rmm_dir, dest;
	size_t index = 0;
	bool force = false, quiet = false;
};

std::string describe(const lora::RmmInputReport& r) {
	std::string text = fmt::format("relative error {:.3e} (worst module {}: {:.3e})", r.reconstruction_error,
	                               r.worst_module, r.worst_module_error);
	if (r.compression_error) text += fmt::format(", SVD compression error {:.3e}", *r.compression_error);
	return text;
}

int build(const RmmArgs& args) {
	if (args.build_paths.size() < 2) throw Error("rmm build needs at least one input and the output folder");
	const std::vector<std::string> inputs(args.build_paths.begin(), args.build_paths.end() - 1);
	lora::RmmBuildOptions options;
	options.rank = args.rank;
	if (!args.base.empty()) options.base = args.base;
	options.svd_rank = args.svd_rank;
	options.force = args.force;
	const auto reports = lora::build_rmm(inputs, args.build_paths.back(), options);
	if (!args.quiet) {
		fmt::print("weld: RMM basis of {} for {} inputs in {}\n", args.rank, inputs.size(), args.build_paths.back());
		for (size_t i = 0; i < reports.size(); ++i)
			fmt::print("  {}: {}: {}\n", i, reports[i].path, describe(reports[i]));
	}
	return 0;
}

int revert(const RmmArgs& args) {
	const auto report = lora::revert_rmm(args.rmm_dir, args.index, args.dest, args.force);
	if (!args.quiet)
		fmt::print("weld: input {} ({}) reverted into {}: {}\n", args.index, report.path, args.dest, describe(report));
	return 0;
}

} // namespace

std::function<int()> add_rmm_command(CLI::App& app) {
	auto args = std::make_shared<RmmArgs>();
	auto* cmd = app.add_subcommand("rmm", "Reversible Model Merging: a basis from which each LoRA adapter (or "
	                                      "SVD-compressed fine-tune) is given back");
	cmd->require_subcommand(1);
	auto* build_cmd = cmd->add_subcommand("build", "Fit the basis and coefficients of N adapters or fine-tunes");
	build_cmd->add_option("paths", args->build_paths, "INPUT... OUT: adapter or model folders, then the output")
	    ->required()
	    ->expected(2, -1);
	build_cmd->add_option("--rank", args->rank, "basis size K (default 2, at most the number of inputs)");
	build_cmd->add_option("--base", args->base, "base model of fine-tuned model inputs");
	build_cmd->add_option("--svd-rank", args->svd_rank, "rank the fine-tuned models' updates are cut to");
	build_cmd->add_flag("--force", args->force, "replace the output folder if it exists");
	build_cmd->add_flag("--quiet,-q", args->quiet, "print nothing but errors");
	auto* revert_cmd = cmd->add_subcommand("revert", "Write input I (from 0) rebuilt from the basis as a PEFT adapter");
	revert_cmd->add_option("rmm", args->rmm_dir, "folder written by weld rmm build")->required();
	revert_cmd->add_option("index", args->index, "which input, counted from 0 in build's order")->required();
	revert_cmd->add_option("dest", args->dest, "output adapter folder")->required();
	revert_cmd->add_flag("--force", args->force, "replace the output folder if it exists");
	revert_cmd->add_flag("--quiet,-q", args->quiet, "print nothing but errors");
	return [args, build_cmd] { return build_cmd->parsed() ? build(*args) : revert(*args); };
}

} // namespace weld::cli
