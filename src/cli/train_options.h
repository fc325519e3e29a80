// The options of `weld train` (parsed by weld-torch; weld forwards them as given).
#pragma once

#include "nn/tasks.h"
#include "nn/train.h"

#include <CLI/CLI.hpp>

#include <string>

namespace weld::cli {

struct TrainArgs {
	nn::TrainJob job;
	nn::TrainOptions options;
	std::string init, config, data, out;
	int log_every = 100;
	bool quiet = false; // no progress lines
};

inline void add_train_options(CLI::App& cmd, TrainArgs& a) {
	cmd.add_option("out", a.out, "output model folder")->required();
	auto* init = cmd.add_option("--init", a.init, "model folder to start from (fine-tuning)");
	auto* config = cmd.add_option("--config", a.config, "config.json of a new model, initialized from --seed");
	init->excludes(config);
	config->excludes(init);
	auto* tasks = cmd.add_option("--tasks", a.job.tasks,
	                             "weld's procedural tasks to train on, in turn (" + tasks::task_names() +
	                                 ", or all); held-out prompts are never trained on")
	                  ->delimiter(',');
	auto* data = cmd.add_option("--data", a.data,
	                            "data file: .jsonl of {\"prompt\", \"answer\"} (loss on the answer) or "
	                            "{\"input_ids\"}, or text lines (the model's tokenizer.json, else byte tokens)");
	tasks->excludes(data);
	data->excludes(tasks);
	cmd.add_flag("--easy-only", a.job.easy_only,
	             "with --tasks: train on each task's easy slice only (no carries or borrows, shorter strings and "
	             "lists, smaller shifts and multipliers: the base of bench/quality)")
	    ->needs(tasks);
	auto& o = a.options;
	cmd.add_option("--steps", o.steps, "optimizer steps")->capture_default_str();
	cmd.add_option("--batch", o.batch, "sequences per step")->capture_default_str();
	cmd.add_option("--lr", o.lr, "peak learning rate")->capture_default_str();
	cmd.add_option("--min-lr", o.min_lr, "learning rate at the end of the cosine")->capture_default_str();
	cmd.add_option("--warmup", o.warmup, "steps of linear warm-up")->capture_default_str();
	cmd.add_option("--weight-decay", o.weight_decay, "AdamW weight decay (matrices only)")->capture_default_str();
	cmd.add_option("--beta1", o.beta1, "AdamW beta1")->capture_default_str();
	cmd.add_option("--beta2", o.beta2, "AdamW beta2")->capture_default_str();
	cmd.add_option("--eps", o.eps,
	               "AdamW epsilon: a larger one (1e-4 and up) moves parameters whose gradients are small less, "
	               "as SGD would")
	    ->capture_default_str();
	cmd.add_option("--clip", o.clip, "gradient clipping: largest global norm (0: none)")->capture_default_str();
	cmd.add_option("--lora-rank", o.lora_rank,
	               "train a LoRA update of this rank on every attention and MLP projection (embeddings, lm_head "
	               "and norms frozen) and save the model with it folded in (0: full fine-tuning)")
	    ->capture_default_str();
	cmd.add_option("--lora-alpha", o.lora_alpha, "LoRA scale numerator: the update is alpha / rank * B A (0: rank)")
	    ->capture_default_str();
	cmd.add_option("--seed", a.job.seed, "seed of the initialization and the order of examples")->capture_default_str();
	cmd.add_option("--threads", o.threads, "CPU threads (default: all cores; results can depend on it)");
	cmd.add_flag("--save-optimizer", a.job.save_optimizer,
	             "also write AdamW's second moments (exp_avg_sq) to OUT/optimizer/");
	cmd.add_option("--log-every", a.log_every, "print the loss every N steps (0: never)")->capture_default_str();
	cmd.add_flag("--force", a.job.force, "replace an existing output folder");
	cmd.add_flag("--quiet,-q", a.quiet, "no progress lines on stderr");
	cmd.callback([&a] {
		if (a.init.empty() && a.config.empty()) throw CLI::RequiredError("--init or --config");
		if (a.job.tasks.empty() && a.data.empty()) throw CLI::RequiredError("--tasks or --data");
		a.job.init = a.init;
		a.job.config_file = a.config;
		a.job.data = a.data;
		a.job.out = a.out;
	});
}

} // namespace weld::cli
