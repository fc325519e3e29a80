// weld apply-lora and weld extract-lora: PEFT LoRA adapters applied to a model, and extracted
// from a fine-tune (mergekit-extract-lora's options).
#include "cli/commands.h"
#include "cli/thread_count.h"
#include "lora/apply.h"
#include "lora/extract.h"
#include "util/error.h"
#include "util/size.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <thread>

namespace weld::cli {

std::function<int()> add_apply_lora_command(CLI::App& app) {
	struct Args {
		ApplyLoraOptions options;
		std::string out, dtype, shard_size = "5GB";
	};
	auto args = std::make_shared<Args>();
	auto* cmd = app.add_subcommand("apply-lora", "Apply a PEFT LoRA adapter to a model: W + scaling * B A for each "
	                                             "adapted module, written as a new model folder");
	cmd->add_option("base", args->options.base, "the base model (folder or HF repo id)")->required();
	cmd->add_option("adapter", args->options.adapter,
	                "the PEFT adapter folder (adapter_config.json + "
	                "adapter_model.safetensors) or HF repo id")
	    ->required();
	cmd->add_option("out", args->out, "output folder (written whole, or not at all)")->required();
	cmd->add_flag("--force", args->options.force, "replace the output folder if it exists");
	cmd->add_option("--dtype", args->dtype, "dtype of the float tensors written (default: each tensor's own)");
	cmd->add_option("--out-shard-size", args->shard_size, "largest shard (default 5GB)");
	return [args] {
		args->options.out = args->out;
		args->options.max_shard_bytes = parse_size(args->shard_size, "--out-shard-size");
		if (!args->dtype.empty()) {
			args->options.dtype = dtype_from_torch_name(args->dtype);
			if (!args->options.dtype || !dtype_is_arithmetic(*args->options.dtype))
				throw Error(fmt::format("--dtype: unknown float dtype '{}' (float32, bfloat16, float16, float64)",
				                        args->dtype));
		}
		apply_lora(args->options);
		fmt::print("weld: applied {} to {} -> {}\n", args->options.adapter, args->options.base, args->out);
		return 0;
	};
}

std::function<int()> add_extract_lora_command(CLI::App& app) {
	struct Args {
		ExtractLoraOptions options;
		std::string out, svd = "auto";
	};
	auto args = std::make_shared<Args>();
	args->options.threads = std::max(1u, std::thread::hardware_concurrency());
	auto* cmd = app.add_subcommand("extract-lora", "Extract a PEFT LoRA adapter from a fine-tune's difference to its "
	                                               "base by truncated SVD (mergekit-extract-lora)");
	auto& o = args->options;
	cmd->add_option("base", o.base, "the base model (folder or HF repo id)")->required();
	cmd->add_option("finetune", o.finetune, "the fine-tuned model (folder or HF repo id)")->required();
	cmd->add_option("out", args->out, "the adapter folder to write")->required();
	cmd->add_option("--max-rank", o.max_rank, "largest rank of a module's factors (default 128)");
	cmd->add_option("--sv-epsilon", o.sv_epsilon, "keep only singular values above this (default 0: keep max-rank)");
	cmd->add_flag("--distribute-scale,!--no-distribute-scale", o.distribute_scale,
	              "A = sqrt(S) Vt, B = U sqrt(S) (default); --no-distribute-scale: A = S Vt, B = U");
	cmd->add_flag("--embed-lora,!--no-embed-lora", o.embed_lora,
	              "decompose embeddings (lora_embedding_A/B) instead of saving them whole (default: no)");
	cmd->add_option("--save-module", o.modules_to_save, "save this module at full rank (modules_to_save); repeatable")
	    ->allow_extra_args(false);
	cmd->add_option("--include-regex,-i", o.include_regexes,
	                "decompose only modules matching one of these regexes (searched); repeatable")
	    ->allow_extra_args(false);
	cmd->add_option("--exclude-regex,-e", o.exclude_regexes, "leave out modules matching this regex; repeatable")
	    ->allow_extra_args(false);
	cmd->add_flag("--skip-undecomposable", o.skip_undecomposable,
	              "leave out modules that are not matrices (norms) instead of saving them whole");
	cmd->add_option("--svd", args->svd, "auto (randomized for large matrices, default), full or randomized")
	    ->check(CLI::IsMember({"auto", "full", "randomized"}));
	cmd->add_option("--threads", o.threads, "modules decomposed at once (default: all cores)")
	    ->check(CLI::PositiveNumber);
	cmd->add_flag("--force", o.force, "replace the output folder if it exists");
	return [args] {
		auto& options = args->options;
		options.threads = capped_thread_count(options.threads);
		options.out = args->out;
		options.svd = args->svd == "full"         ? LoraSvd::Full
		              : args->svd == "randomized" ? LoraSvd::Randomized
		                                          : LoraSvd::Auto;
		options.invocation = fmt::format(
		    "weld extract-lora {} {} {} --max-rank {}{}", options.base, options.finetune, args->out, options.max_rank,
		    options.sv_epsilon > 0 ? fmt::format(" --sv-epsilon {}", options.sv_epsilon) : "");
		const auto summary = extract_lora(options);
		for (const auto& warning : summary.warnings)
			std::fprintf(stderr, "weld: warning: %s\n", warning.c_str());
		fmt::print("weld: extracted a rank-{} LoRA ({} modules decomposed, {} by randomized SVD; {} tensors saved "
		           "whole) -> {}\n",
		           summary.rank, summary.decomposed, summary.randomized, summary.saved, args->out);
		return 0;
	};
}

} // namespace weld::cli
