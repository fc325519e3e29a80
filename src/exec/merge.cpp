#include "exec/merge.h"

#include "exec/output_folder.h"

#include "util/error.h"
#include "util/size.h"

#include <fmt/format.h>

#include <chrono>

namespace weld {
namespace fs = std::filesystem;
namespace {

std::string model_card(const Plan& plan) {
	std::string card = "---\nlibrary_name: transformers\ntags:\n- weld\n- merge\n";
	if (plan.base_model >= 0) card += fmt::format("base_model:\n- {}\n", plan.models[plan.base_model].reference);
	card += "---\n\n# Merged model\n\n";
	card += fmt::format("This model was merged with weld using the **{}** method", plan.method->info().name);
	if (!plan.method->info().reference.empty()) card += fmt::format(" ({})", plan.method->info().reference);
	card += ".\n\n## Models merged\n\n";
	for (size_t i = 0; i < plan.models.size(); i++)
		card +=
		    fmt::format("- {}{}\n", plan.models[i].reference, static_cast<int>(i) == plan.base_model ? " (base)" : "");
	card += fmt::format("\n## Recipe\n\n```yaml\n{}{}```\n", plan.recipe.text,
	                    plan.recipe.text.ends_with('\n') ? "" : "\n");
	return card;
}

void write_folder(const Plan& plan, const fs::path& dir, const MergeOptions& options) {
	execute_plan(plan, dir, options.exec);
	if (!plan.config_json.empty()) write_text_file(dir / "config.json", plan.config_json);
	copy_tokenizer_files(plan.tokenizer_dir, dir);
	write_text_file(dir / "weld_recipe.yml", plan.recipe.text);
	write_text_file(dir / "README.md", model_card(plan));
}

} // namespace

MergeSummary run_merge(const MergeOptions& options) {
	const auto start = std::chrono::steady_clock::now();
	const auto label = options.recipe_path.string();
	Plan plan = build_plan(parse_recipe(read_text_file(options.recipe_path), label), options.seed);

	MergeSummary summary;
	summary.tensors = plan.jobs.size();
	summary.warnings = plan.warnings;
	if (options.dry_run) {
		summary.plan_text = describe_plan(plan);
		return summary;
	}

	write_folder_atomically(options.out_dir, options.force,
	                        [&](const fs::path& tmp) { write_folder(plan, tmp, options); });

	const fs::path out = options.out_dir;
	for (const auto& entry : fs::directory_iterator(out))
		if (entry.path().extension() == ".safetensors") summary.shards++;
	summary.bytes_written = plan.output_bytes();
	summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
	return summary;
}

} // namespace weld
