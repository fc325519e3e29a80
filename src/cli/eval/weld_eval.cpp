// weld-eval: the libtorch side of `weld eval` (weld parses the options and runs this program).
#include "cli/eval_options.h"
#include "io/model.h"
#include "nn/eval.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <exception>

namespace {

int evaluate(const weld::cli::EvalArgs& args) {
	namespace nn = weld::nn;
	const auto dir = weld::resolve_model_reference(args.model);
	const auto report = nn::evaluate(dir, args.data, {args.dtype, args.threads});
	const bool perplexity = report.kind == nn::EvalReport::Kind::Perplexity;
	if (args.json) {
		nlohmann::ordered_json out;
		if (perplexity)
			out = {{"perplexity", report.perplexity}, {"tokens", report.tokens}};
		else
			out = {{"accuracy", report.accuracy}, {"n", report.n}};
		fmt::print("{}\n", out.dump());
	} else if (perplexity) {
		fmt::print("perplexity {:.4f} (mean negative log-likelihood {:.6f}) over {} tokens in {} sequences\n",
		           report.perplexity, report.mean_nll, report.tokens, report.sequences);
	} else {
		fmt::print("accuracy {:.4f} ({} of {} exact matches)\n", report.accuracy, report.correct, report.n);
	}
	return 0;
}

} // namespace

int main(int argc, char** argv) {
	CLI::App app{"weld-eval: evaluate a Llama-family model (run as `weld eval`)"};
	weld::cli::EvalArgs args;
	weld::cli::add_eval_options(app, args);
	try {
		app.parse(argc, argv);
	} catch (const CLI::ParseError& e) {
		return app.exit(e);
	}
	try {
		return evaluate(args);
	} catch (const std::exception& e) {
		std::fprintf(stderr, "weld: error: %s\n", e.what());
		return 1;
	}
}
