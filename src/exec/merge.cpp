#include "exec/merge.h"

#include "util/error.h"
#include "util/size.h"

#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <system_error>
#include <unistd.h>

namespace weld {
namespace fs = std::filesystem;
namespace {

std::string read_text(const fs::path& path) {
	std::ifstream in(path, std::ios::binary);
	if (!in) throw Error(fmt::format("{}: cannot read file", path.string()));
	std::ostringstream text;
	text << in.rdbuf();
	return text.str();
}

void write_text(const fs::path& path, const std::string& text) {
	std::ofstream out(path, std::ios::binary);
	out << text;
	out.close();
	if (!out) throw Error(fmt::format("{}: cannot write file", path.string()));
}

// Files a tokenizer may consist of, across the common tokenizer classes.
constexpr const char* kTokenizerFiles[] = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt",     "added_tokens.json",     "generation_config.json",
};

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
	if (!plan.config_json.empty()) write_text(dir / "config.json", plan.config_json);
	for (const char* name : kTokenizerFiles) {
		const auto from = plan.tokenizer_dir / name;
		if (fs::is_regular_file(from)) fs::copy_file(from, dir / name);
	}
	write_text(dir / "weld_recipe.yml", plan.recipe.text);
	write_text(dir / "README.md", model_card(plan));
}

// Moves the finished folder into place; with --force an existing output is replaced only
// after the new one is complete.
void publish(const fs::path& tmp, const fs::path& out, bool force) {
	std::error_code ec;
	if (fs::exists(out)) {
		if (!force) throw Error(fmt::format("{}: output already exists (use --force to replace it)", out.string()));
		const auto old = fs::path(out.string() + fmt::format(".weld-old-{}", getpid()));
		fs::rename(out, old, ec);
		if (ec) throw Error(fmt::format("{}: cannot move the old output aside: {}", out.string(), ec.message()));
		fs::rename(tmp, out, ec);
		if (ec) {
			fs::rename(old, out);
			throw Error(fmt::format("{}: cannot move the new output into place: {}", out.string(), ec.message()));
		}
		fs::remove_all(old);
		return;
	}
	fs::rename(tmp, out, ec);
	if (ec) throw Error(fmt::format("{}: cannot move the output into place: {}", out.string(), ec.message()));
}

} // namespace

MergeSummary run_merge(const MergeOptions& options) {
	const auto start = std::chrono::steady_clock::now();
	const auto label = options.recipe_path.string();
	Plan plan = build_plan(parse_recipe(read_text(options.recipe_path), label), options.seed);

	MergeSummary summary;
	summary.tensors = plan.jobs.size();
	summary.warnings = plan.warnings;
	if (options.dry_run) {
		summary.plan_text = describe_plan(plan);
		return summary;
	}

	const fs::path out = fs::absolute(options.out_dir).lexically_normal();
	if (out.filename().empty())
		throw Error(fmt::format("{}: not a valid output folder name", options.out_dir.string()));
	if (fs::exists(out) && !options.force)
		throw Error(fmt::format("{}: output already exists (use --force to replace it)", out.string()));
	if (!fs::is_directory(out.parent_path()))
		throw Error(fmt::format("{}: parent folder does not exist", out.string()));
	const fs::path tmp = out.parent_path() / fmt::format(".{}.weld-tmp-{}", out.filename().string(), getpid());
	fs::remove_all(tmp);
	fs::create_directory(tmp);
	try {
		write_folder(plan, tmp, options);
		publish(tmp, out, options.force);
	} catch (...) {
		std::error_code ignored;
		fs::remove_all(tmp, ignored);
		throw;
	}

	for (const auto& entry : fs::directory_iterator(out))
		if (entry.path().extension() == ".safetensors") summary.shards++;
	summary.bytes_written = plan.output_bytes();
	summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
	return summary;
}

} // namespace weld
