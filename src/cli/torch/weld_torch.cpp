// weld-torch: the libtorch side of `weld eval` and `weld train` (cli/torch_program.h).
#include "cli/align_options.h"
#include "cli/eval_options.h"
#include "cli/moe_options.h"
#include "cli/stats_options.h"
#include "cli/train_options.h"
#include "cli/verify_protect_options.h"
#include "exec/distributed.h"
#include "io/model.h"
#include "learned/learned_merge.h"
#include "nn/align_activation.h"
#include "nn/eval.h"
#include "nn/moe_states.h"
#include "search/search.h"
#include "util/progress.h"
#include "util/size.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <exception>
#include <optional>
#include <unistd.h>

namespace {

namespace nn = weld::nn;

int evaluate_tasks(const weld::cli::EvalArgs& args, const std::filesystem::path& dir) {
	const auto scores = nn::evaluate_tasks(dir, args.tasks, args.held_out, args.task_seed, {args.dtype, args.threads});
	double sum = 0;
	uint64_t n = 0;
	nlohmann::ordered_json per_task = nlohmann::ordered_json::object();
	for (const auto& s : scores) {
		sum += s.accuracy;
		n += s.n;
		per_task[s.task] = {{"accuracy", s.accuracy}, {"n", s.n}};
	}
	const double mean = sum / static_cast<double>(scores.size());
	if (args.json) {
		nlohmann::ordered_json out = {{"accuracy", mean}, {"n", n}, {"tasks", per_task}};
		fmt::print("{}\n", out.dump());
		return 0;
	}
	for (const auto& s : scores)
		fmt::print("{:<10} accuracy {:.4f} ({} of {} exact matches)\n", s.task, s.accuracy, s.correct, s.n);
	fmt::print("mean       accuracy {:.4f} over {} tasks\n", mean, scores.size());
	return 0;
}

int evaluate(const weld::cli::EvalArgs& args) {
	weld::set_progress_quiet(args.quiet);
	const auto dir = weld::resolve_model_reference(args.model);
	if (!args.tasks.empty()) return evaluate_tasks(args, dir);
	const auto report = nn::evaluate(dir, args.data, {args.dtype, args.threads, args.chat});
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

int train(const weld::cli::TrainArgs& args) {
	const auto steps = args.options.steps;
	weld::set_progress_quiet(args.quiet);
	weld::Progress progress("train", static_cast<uint64_t>(steps), "steps");
	nn::train(args.job, args.options, [&](const nn::StepReport& r) {
		progress.add(1);
		if (args.log_every > 0 && ((r.step + 1) % args.log_every == 0 || r.step + 1 == steps)) {
			fmt::print("step {}/{} loss {:.4f} lr {:.2e} grad-norm {:.3f}\n", r.step + 1, steps, r.loss, r.lr,
			           r.grad_norm);
			std::fflush(stdout);
		}
	});
	progress.finish();
	fmt::print("wrote {}\n", args.job.out.string());
	return 0;
}

int compute_stats(weld::cli::StatsArgs& args) {
	args.job.model = weld::resolve_model_reference(args.model);
	args.job.data = args.data;
	args.job.out = args.out;
	args.job.kind = weld::stats::parse_kind(args.kind);
	weld::set_progress_quiet(args.quiet);
	std::optional<weld::Progress> progress; // the total is known once the data is read
	uint64_t reported = 0;
	const auto summary = weld::stats::compute_statistics(args.job, [&](const weld::stats::StatsProgress& p) {
		if (!progress) progress.emplace("stats", p.total_tokens, "tokens");
		progress->add(p.tokens - reported);
		reported = p.tokens;
	});
	if (progress) progress->finish();
	fmt::print("wrote {} ({} statistics over {} tokens of {} sequences)\n", args.out, args.kind, summary.tokens,
	           summary.sequences);
	return 0;
}

int search(weld::search::SearchOptions& args, const std::string& spec, const std::string& out) {
	args.spec = spec;
	args.out = out;
	const auto distributed = weld::Distributed::join();
	const auto result = weld::search::run_search(args, distributed);
	if (distributed.is_root()) {
		const double minutes = result.seconds / 60;
		fmt::print("weld search: best fitness {:.6f} after {} evaluations ({} replayed from the journal); {:.1f} "
		           "evaluations per minute per rank; wrote {}/best.yml and {}/model\n",
		           result.best_fitness, result.evaluations, result.replayed,
		           minutes > 0 ? static_cast<double>(result.evaluations - result.replayed) / minutes : 0.0, out, out);
	}
	return 0;
}

int verify_protect(const weld::cli::VerifyProtectArgs& a) {
	nn::EvalOptions options;
	options.threads = a.threads;
	const auto r = nn::compare_logits(a.original, a.protected_model, a.sequences, a.length, a.seed, options);
	if (a.json) {
		const nlohmann::ordered_json out = {
		    {"max_logit_difference", r.max_difference}, {"max_abs_logit", r.max_abs_logit}, {"positions", r.positions}};
		fmt::print("{}\n", out.dump());
	} else {
		fmt::print("max |logit difference| {:.3g} over {} positions (largest |logit| {:.3g})\n", r.max_difference,
		           r.positions, r.max_abs_logit);
	}
	return 0;
}

int align(const weld::cli::AlignArgs& a) {
	if (a.data.empty()) throw weld::Error(fmt::format("weld align --method {}: needs --data", a.method));
	nn::DataAlignJob job;
	job.ref = a.ref;
	job.model = a.model;
	job.out = a.out;
	job.data = a.data;
	job.method = a.method;
	job.width = a.width;
	job.ridge = a.ridge;
	job.rotate = a.rotate;
	job.samples = a.samples;
	job.force = a.force;
	job.threads = a.threads;
	job.max_shard_bytes = weld::parse_size(a.shard_size, "--out-shard-size");
	const auto r = nn::run_data_alignment(job);
	if (!a.quiet)
		fmt::print("weld: align --method {}: {} sequences, {} tokens; mean correlation of matched units: residual "
		           "{:.3f} -> {:.3f}, MLP {:.3f} -> {:.3f}; wrote {}\n",
		           a.method, r.sequences, r.tokens, r.match.residual_before, r.match.residual_after, r.match.mlp_before,
		           r.match.mlp_after, a.out);
	if (!a.quiet && a.rotate)
		fmt::print("weld: align --rotate: residual misfit |H_model - H_ref| / |H_ref| {:.3f} -> {:.3f}\n",
		           r.residual_misfit_before, r.residual_misfit_after);
	return 0;
}

} // namespace

int main(int argc, char** argv) {
	CLI::App app{"weld-torch: the libtorch commands of weld (run as `weld eval` and `weld train`)"};
	app.require_subcommand(1);
	weld::cli::EvalArgs eval_args;
	weld::cli::TrainArgs train_args;
	weld::cli::StatsArgs stats_args;
	auto* eval = app.add_subcommand("eval", "evaluate a Llama-family model");
	weld::cli::add_eval_options(*eval, eval_args);
	auto* train_cmd = app.add_subcommand("train", "train or fine-tune a Llama-family model");
	weld::cli::add_train_options(*train_cmd, train_args);
	auto* stats_cmd = app.add_subcommand("stats", "statistics of a model on data, for data-driven merges");
	weld::learned::LearnedMergeOptions merge_args;
	std::string merge_recipe, merge_out;
	auto* merge_cmd = app.add_subcommand("merge", "a merge whose method learns from data (weld merge hands it here)");
	merge_cmd->add_option("recipe", merge_recipe)->required();
	merge_cmd->add_option("out", merge_out)->required();
	merge_cmd->add_option("--threads", merge_args.threads);
	merge_cmd->add_option("--seed", merge_args.seed);
	merge_cmd->add_flag("--force", merge_args.force);
	merge_cmd->add_flag("--quiet", merge_args.quiet);
	weld::cli::add_stats_options(*stats_cmd, stats_args);
	weld::search::SearchOptions search_args;
	std::string search_spec, search_out;
	auto* search_cmd = app.add_subcommand("search", "search recipe parameters (weld search SPEC OUT)");
	search_cmd->add_option("spec", search_spec, "the search SPEC (YAML)")->required();
	search_cmd->add_option("out", search_out, "output folder: journal.jsonl, best.yml, model/")->required();
	search_cmd->add_flag("--resume", search_args.resume, "continue the search whose journal OUT holds");
	search_cmd->add_flag("--force", search_args.force, "replace OUT");
	search_cmd->add_flag("--quiet", search_args.quiet, "no progress lines");
	weld::cli::MoeArgs moe_args;
	auto* moe_cmd = app.add_subcommand("moe", "a mixture of experts whose gates run the base model (weld moe)");
	weld::cli::add_moe_options(*moe_cmd, moe_args);
	weld::cli::VerifyProtectArgs verify_args;
	auto* verify_cmd =
	    app.add_subcommand("verify-protect", "largest logit difference of a model and its protected copy");
	weld::cli::add_verify_protect_options(*verify_cmd, verify_args);
	weld::cli::AlignArgs align_args;
	auto* align_cmd = app.add_subcommand("align", "align a model to another by activations, or merge them by PLeaS");
	weld::cli::add_align_options(*align_cmd, align_args);
	try {
		app.parse(argc, argv);
	} catch (const CLI::ParseError& e) {
		return app.exit(e);
	}
	try {
		if (stats_cmd->parsed()) return compute_stats(stats_args);
		if (verify_cmd->parsed()) return verify_protect(verify_args);
		if (align_cmd->parsed()) return align(align_args);
		if (moe_cmd->parsed()) return weld::cli::run_moe(moe_args, nn::runtime_prompt_states());
		if (search_cmd->parsed()) return search(search_args, search_spec, search_out);
		if (merge_cmd->parsed()) {
			merge_args.recipe = merge_recipe;
			merge_args.out = merge_out;
			weld::learned::run_learned_merge(merge_args);
			if (!merge_args.quiet)
				fmt::print("weld: merged into {} (learned recipe in its weld_recipe.yml)\n", merge_out);
			return 0;
		}
		return eval->parsed() ? evaluate(eval_args) : train(train_args);
	} catch (const std::exception& e) {
		std::fprintf(stderr, "weld: error: %s\n", e.what());
		return 1;
	}
}
