#include "cli/commands.h"
#include "io/model.h"
#include "util/error.h"

#ifdef WELD_HAVE_TORCH
#include "nn/eval.h"
#endif

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <memory>

namespace weld::cli {
namespace {

struct EvalArgs {
	std::string model;
	std::string data;
	std::string dtype = "float32";
	int threads = 0;
	bool json = false;
};

#ifdef WELD_HAVE_TORCH
int run(const EvalArgs& args) {
	const auto dir = resolve_model_reference(args.model);
	const auto report = nn::evaluate(dir, args.data, {args.dtype, args.threads});
	const bool ppl = report.kind == nn::EvalReport::Kind::Perplexity;
	if (args.json) {
		nlohmann::ordered_json out;
		if (ppl)
			out = {{"perplexity", report.perplexity}, {"tokens", report.tokens}};
		else
			out = {{"accuracy", report.accuracy}, {"n", report.n}};
		fmt::print("{}\n", out.dump());
	} else if (ppl) {
		fmt::print("perplexity {:.4f} (mean negative log-likelihood {:.6f}) over {} tokens in {} sequences\n",
		           report.perplexity, report.mean_nll, report.tokens, report.sequences);
	} else {
		fmt::print("accuracy {:.4f} ({} of {} exact matches)\n", report.accuracy, report.correct, report.n);
	}
	return 0;
}
#else
int run(const EvalArgs&) {
	throw Error("weld was built without libtorch; install libtorch-dev and rebuild");
}
#endif

} // namespace

std::function<int()> add_eval_command(CLI::App& app) {
	auto args = std::make_shared<EvalArgs>();
	auto* cmd = app.add_subcommand("eval", "Perplexity on text or token ids, or exact-match accuracy on "
	                                       "prompt/answer pairs, of a Llama-family model (libtorch)");
	cmd->add_option("model", args->model, "model folder or Hugging Face repo id in the local cache")->required();
	cmd->add_option("--data", args->data,
	                "text file (one sequence per line, byte tokens), or .jsonl of {\"input_ids\": [...]} or "
	                "{\"prompt\": ..., \"answer\": ...}")
	    ->required();
	cmd->add_option("--dtype", args->dtype, "computation type: float32 or bfloat16")->capture_default_str();
	cmd->add_option("--threads", args->threads, "CPU threads (default: all cores)");
	cmd->add_flag("--json", args->json, "print one JSON object: {\"perplexity\", \"tokens\"} or {\"accuracy\", \"n\"}");
	return [args] { return run(*args); };
}

} // namespace weld::cli
