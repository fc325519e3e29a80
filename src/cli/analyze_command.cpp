// `weld analyze BASE MODEL... -o REPORT`: how fine-tunes differ from their base and from each
// other, as an HTML report with PNG plots and summary.json (analyze/, docs/analyze.md).
#include "analyze/analyze.h"
#include "analyze/report.h"
#include "cli/commands.h"
#include "io/output_folder.h"
#include "util/progress.h"
#include "util/size.h"

#include <fmt/format.h>

#include <memory>
#include <thread>
#include <unistd.h>

namespace weld::cli {
namespace {

struct AnalyzeArgs {
	std::vector<std::string> models; // the base, then the fine-tunes
	std::string out, recipe, memory_budget;
	unsigned threads = std::max(1u, std::thread::hardware_concurrency());
	bool force = false, quiet = false;
};

uint64_t default_memory_budget() {
	const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || page_size <= 0) return 2ull << 30;
	return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) / 4;
}

int run(const AnalyzeArgs& args) {
	set_progress_quiet(args.quiet);
	analyze::AnalyzeOptions options;
	options.base = args.models.front();
	options.models.assign(args.models.begin() + 1, args.models.end());
	options.recipe = args.recipe;
	options.threads = args.threads;
	options.memory_budget =
	    args.memory_budget.empty() ? default_memory_budget() : parse_size(args.memory_budget, "--memory-budget");
	// Refuse an existing output before the work, not after it.
	OutputFolder folder(args.out, args.force);
	const auto analysis = analyze::analyze_models(options);
	analyze::write_report(analysis, folder.path());
	folder.publish();
	if (!args.quiet) fmt::print("weld: wrote {}/index.html and {}/summary.json\n", args.out, args.out);
	return 0;
}

} // namespace

std::function<int()> add_analyze_command(CLI::App& app) {
	auto args = std::make_shared<AnalyzeArgs>();
	auto* cmd = app.add_subcommand("analyze", "Compare fine-tunes with their base before merging: task-vector norms, "
	                                          "cosines, sign conflicts, spectra, top-k overlap, as an HTML report");
	cmd->add_option("models", args->models, "the base model, then one or more fine-tunes of it")
	    ->required()
	    ->expected(2, -1);
	cmd->add_option("-o,--out", args->out, "report folder: index.html, its PNGs and summary.json")->required();
	cmd->add_option("--recipe", args->recipe, "also show what this recipe's merge keeps of each model, per layer");
	cmd->add_option("--memory-budget", args->memory_budget,
	                "most memory for tensors in flight, e.g. 4GB (default: a quarter of RAM)");
	cmd->add_option("--threads", args->threads, "worker threads (default: all cores)")->check(CLI::PositiveNumber);
	cmd->add_flag("--force", args->force, "replace the report folder if it exists");
	cmd->add_flag("--quiet,-q", args->quiet, "no progress or summary line");
	return [args] { return run(*args); };
}

} // namespace weld::cli
