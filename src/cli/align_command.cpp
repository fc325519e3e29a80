// `weld align REF MODEL OUT --method weight_matching|activation|pleas`: MODEL's hidden units
// permuted (function preserved) to line up with REF's, before a merge; pleas writes the merge.
// weight_matching runs here; the data-driven methods run in weld-torch (cli/torch_program.h).
#include "align/weight_matching.h"
#include "cli/align_options.h"
#include "cli/commands.h"
#include "cli/torch_program.h"
#include "util/size.h"

#include <fmt/format.h>

#include <memory>

namespace weld::cli {

std::function<int()> add_align_command(CLI::App& app) {
	auto args = std::make_shared<AlignArgs>();
	auto* cmd = app.add_subcommand("align", "Permute MODEL's hidden units (the same function) to line up with REF's "
	                                        "(weight matching or activation matching), or merge the two by PLeaS");
	add_align_options(*cmd, *args);
	return [args]() -> int {
		const auto& a = *args;
		if (a.method != "weight_matching") run_torch_program("align", align_words(a));
		AlignOptions options;
		options.ref = a.ref;
		options.model = a.model;
		options.out = a.out;
		options.method = a.method;
		options.matching.seed = a.seed;
		options.matching.max_iterations = static_cast<int>(a.iterations);
		options.force = a.force;
		options.max_shard_bytes = parse_size(a.shard_size, "--out-shard-size");
		const auto report = align_by_weight_matching(options);
		if (!a.quiet)
			fmt::print("weld align: {}, {} iterations, cosine(REF, MODEL) {:.6f} before, {:.6f} after; wrote {}\n",
			           a.method, report.iterations, report.cosine_before, report.cosine_after, a.out);
		return 0;
	};
}

} // namespace weld::cli
