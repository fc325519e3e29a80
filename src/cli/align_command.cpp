// `weld align REF MODEL OUT --method weight_matching`: MODEL's hidden units permuted (function
// preserved) to line up with REF's, before a merge.
#include "align/weight_matching.h"
#include "cli/commands.h"
#include "util/error.h"
#include "util/size.h"

#include <fmt/format.h>

#include <memory>

namespace weld::cli {

std::function<int()> add_align_command(CLI::App& app) {
	struct Args {
		AlignOptions options;
		std::string shard_size = "5GB";
		std::string data;
		int64_t width = 0, samples = 0;
		bool quiet = false;
	};
	auto args = std::make_shared<Args>();
	auto* cmd = app.add_subcommand("align", "Permute MODEL's hidden units (the same function) to line up with REF's "
	                                        "(Git Re-Basin weight matching)");
	cmd->add_option("ref", args->options.ref, "reference model folder (or Hugging Face cache id)")->required();
	cmd->add_option("model", args->options.model, "model folder to permute (or Hugging Face cache id)")->required();
	cmd->add_option("out", args->options.out, "output folder")->required();
	cmd->add_option("--method", args->options.method, "weight_matching, activation or pleas")
	    ->required()
	    ->check(CLI::IsMember({"weight_matching", "activation", "pleas"}));
	cmd->add_option("--seed", args->options.matching.seed, "order in which the permutation groups are visited");
	cmd->add_option("--iterations", args->options.matching.max_iterations,
	                "most sweeps over the groups (default 100; stops earlier when a sweep changes nothing)");
	cmd->add_option("--data", args->data, "prompts (JSONL) for --method activation or pleas");
	cmd->add_option("--width", args->width, "width for --method pleas");
	cmd->add_option("--samples", args->samples, "samples for --method activation or pleas");
	cmd->add_option("--out-shard-size", args->shard_size, "largest output shard (default 5GB)");
	cmd->add_flag("--force", args->options.force, "replace the output folder if it exists");
	cmd->add_flag("--quiet,-q", args->quiet, "print nothing but errors");
	return [args] {
		const auto& method = args->options.method;
		if (method != "weight_matching") throw Error(fmt::format("weld align --method {}: not built yet", method));
		args->options.max_shard_bytes = parse_size(args->shard_size, "--out-shard-size");
		const auto report = align_by_weight_matching(args->options);
		if (!args->quiet)
			fmt::print("weld align: {}, {} iterations, cosine(REF, MODEL) {:.6f} before, {:.6f} after; wrote {}\n",
			           method, report.iterations, report.cosine_before, report.cosine_after, args->options.out);
		return 0;
	};
}

} // namespace weld::cli
