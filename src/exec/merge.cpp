#include "exec/merge.h"

#include "io/gguf_model.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "io/shard_journal.h"
#include "io/tokenizer_files.h"
#include "util/error.h"
#include "util/size.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <set>
#include <unistd.h>

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

// Everything in the folder but the weights (and, for a distributed merge, the shard index).
void write_other_files(const Plan& plan, const fs::path& dir) {
	if (!plan.config_json.empty()) write_text_file(dir / "config.json", plan.config_json);
	write_tokenizer_output(plan.tokenizer, dir);
	write_text_file(dir / "weld_recipe.yml", plan.recipe.text);
	write_text_file(dir / "README.md", model_card(plan));
}

// The output tensors as execute_plan lays them out.
std::vector<OutputTensorSpec> output_specs(const Plan& plan) {
	std::vector<OutputTensorSpec> specs;
	for (const auto& job : plan.jobs)
		specs.push_back({job.name, job.out_dtype, job.shape});
	return specs;
}

// What `rank` does of the plan: the jobs whose shard it writes (the ones execute_plan runs there).
RankWork rank_work(const Plan& plan, const OutputLayout& layout, const std::vector<unsigned>& owner, unsigned rank) {
	RankWork work;
	for (size_t i = 0; i < plan.jobs.size(); i++) {
		if (owner[layout.shard_of[i]] != rank) continue;
		work.tensors++;
		for (const auto& s : plan.jobs[i].sources)
			work.bytes_read += s.numel * dtype_size(s.tensor->info->dtype);
	}
	for (size_t k = 0; k < layout.shards.size(); k++)
		if (owner[k] == rank) work.bytes_written += layout.shards[k].file_size;
	return work;
}

// model+lora models are applied beside the output, on the disk that has room for it (the
// system's temporary folder may be small or in memory).
fs::path lora_scratch_root(const fs::path& out_dir) {
	const auto parent = fs::absolute(out_dir).lexically_normal().parent_path();
	std::error_code ec;
	return fs::is_directory(parent, ec) ? parent : fs::path();
}

// The merge written as one GGUF file: the folder's other files (config.json, tokenizer) are
// written first into a temporary folder beside the output, and the GGUF metadata is read from
// them; the file is moved into place once complete, and the folder removed.
void write_gguf(Plan& plan, const MergeOptions& options, const ExecOptions& exec) {
	check_gguf_output(options.out_dir, options.force);
	OutputFolder folder(options.out_dir, options.force);
	write_other_files(plan, folder.path());
	DType out_dtype = DType::F32;
	for (const auto& job : plan.jobs)
		if (job.shape.size() == 2) out_dtype = job.out_dtype;
	const GgmlType type = options.gguf_type.value_or(default_gguf_type(out_dtype));
	const bool same_type = (type == GgmlType::F32 && out_dtype == DType::F32) ||
	                       (type == GgmlType::F16 && out_dtype == DType::F16) ||
	                       (type == GgmlType::BF16 && out_dtype == DType::BF16);
	if (!same_type)
		for (auto& job : plan.jobs) // merged in float32 and rounded once, to the GGUF type
			job.out_dtype = DType::F32;
	const auto file = folder.path() / "model.gguf";
	GgufModelWriter writer(file, output_specs(plan), folder.path(), type, options.out_dir.stem().string(),
	                       options.out_dir.string());
	execute_plan(plan, writer, exec);
	publish_file(file, options.out_dir);
}

// What the output's bytes depend on, for the shard journal of a single-process merge.
ShardJournal journal_identity(const Plan& plan, const std::string& recipe_text, const MergeOptions& options,
                              const OutputLayout& layout) {
	ShardJournal journal;
	journal.recipe_sha256 = sha256_hex(recipe_text);
	journal.options = fmt::format("seed={} out_shard_size={} allow_nonfinite={}", options.seed,
	                              options.exec.max_shard_bytes, options.exec.allow_nonfinite ? 1 : 0);
	// Every file a tensor is read from, by path, size and modification time. Files weld makes
	// for the run itself (models with a LoRA applied, converted GGUF files, in ".weld-*"
	// folders) change path and time each run: their size stands for them.
	std::set<fs::path> files;
	for (const auto& job : plan.jobs)
		for (const auto& source : job.sources) {
			files.insert(source.tensor->file->path());
			if (source.statistics) files.insert(source.statistics->file->path());
		}
	std::vector<std::string> lines; // sorted, as scratch paths sort differently from run to run
	for (const auto& file : files) {
		std::error_code ec;
		const auto size = fs::file_size(file, ec);
		if (file.parent_path().filename().string().starts_with(".weld-")) {
			lines.push_back(fmt::format("{} {}\n", file.filename().string(), size));
			continue;
		}
		const auto time = fs::last_write_time(file, ec).time_since_epoch().count();
		lines.push_back(fmt::format("{} {} {}\n", fs::absolute(file).string(), size, time));
	}
	std::sort(lines.begin(), lines.end());
	std::string inputs;
	for (const auto& line : lines)
		inputs += line;
	journal.inputs_sha256 = sha256_hex(inputs);
	std::string shards;
	for (const auto& shard : layout.shards)
		shards += shard.file_name + "\n" + shard.header;
	journal.layout_sha256 = sha256_hex(shards);
	return journal;
}

// The temporary folder of the killed merge of out_dir that `journal` (this run's identity) can
// continue; its journaled shards go into journal.shards. Throws weld::Error when there is none,
// or when the interrupted merge had another recipe, options or inputs.
fs::path find_interrupted_merge(const fs::path& out_dir, ShardJournal& journal) {
	const auto candidates = stale_temporary_folders(out_dir);
	if (candidates.empty())
		throw Error(fmt::format("{}: --resume: no interrupted merge to continue (no temporary folder .{}.weld-tmp-PID "
		                        "of a stopped run beside it)",
		                        out_dir.string(), fs::absolute(out_dir).lexically_normal().filename().string()));
	std::optional<std::pair<fs::path, std::string>> mismatch;
	for (const auto& folder : candidates) {
		std::optional<ShardJournal> recorded;
		try {
			recorded = read_shard_journal(folder);
		} catch (const Error&) {
			continue; // unreadable: nothing to keep from it
		}
		if (!recorded) continue;
		const auto differs = shard_journal_mismatch(*recorded, journal);
		if (differs.empty()) {
			journal.shards = recorded->shards;
			return folder;
		}
		if (!mismatch) mismatch.emplace(folder, differs);
	}
	if (mismatch)
		throw Error(fmt::format("{}: --resume: the interrupted merge in {} was made with a different {}; run without "
		                        "--resume to start over",
		                        out_dir.string(), mismatch->first.string(), mismatch->second));
	return candidates.front(); // killed before it wrote a journal: nothing to keep
}

// Keeps the journaled shards in dir that are what the journal says (name in the layout, size,
// SHA-256) and removes everything else; journal.shards becomes the kept ones. Returns how many.
size_t keep_verified_shards(const fs::path& dir, const OutputLayout& layout, ShardJournal& journal,
                            std::vector<std::string>& warnings) {
	std::vector<ShardRecord> kept;
	std::set<std::string> keep;
	for (const auto& record : journal.shards) {
		const auto shard = std::find_if(layout.shards.begin(), layout.shards.end(),
		                                [&](const auto& s) { return s.file_name == record.file; });
		std::string problem;
		std::error_code ec;
		const auto path = dir / record.file;
		if (shard == layout.shards.end() || shard->file_size != record.size)
			problem = "is not a shard of this output";
		else if (fs::file_size(path, ec) != record.size || ec)
			problem = ec ? "is missing" : "has another size than when it was written";
		else if (sha256_hex_of_file(path) != record.sha256)
			problem = "has changed since it was written (SHA-256)";
		if (!problem.empty()) {
			warnings.push_back(fmt::format("--resume: {} {}; writing it again", record.file, problem));
			continue;
		}
		if (keep.insert(record.file).second) kept.push_back(record);
	}
	std::vector<fs::path> stale;
	for (const auto& entry : fs::directory_iterator(dir))
		if (!keep.contains(entry.path().filename().string())) stale.push_back(entry.path());
	for (const auto& path : stale)
		fs::remove_all(path);
	journal.shards = std::move(kept);
	return journal.shards.size();
}

} // namespace

uint64_t default_memory_budget() {
	const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || page_size <= 0) return 2ull << 30;
	return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) / 4;
}

MergeSummary run_merge(const MergeOptions& options) {
	const auto start = std::chrono::steady_clock::now();
	const Distributed single_process;
	const Distributed& dist = options.distributed ? *options.distributed : single_process;
	const auto label = options.recipe_path.string();
	ExecOptions exec = options.exec;
	exec.rank = dist.rank();
	exec.ranks = dist.size();
	exec.progress = exec.progress && dist.is_root();

	// Each step below runs on every rank, and a failure on one is a failure on all (agree), so
	// that every rank stops at the same point and none waits for another forever.
	Plan plan;
	std::vector<OutputTensorSpec> specs;
	OutputLayout layout;
	std::optional<ShardJournal> journal; // a single process's, of a folder output
	dist.agree([&] {
		if (options.gguf && dist.size() > 1)
			throw Error("--format gguf: one GGUF file is written by one process, not under mpirun");
		if (options.resume && dist.size() > 1) throw Error("--resume is not supported with MPI yet");
		if (options.resume && options.gguf) throw Error("--resume: only for model folders, not --format gguf");
		const auto text = options.recipe_text.empty() ? read_text_file(options.recipe_path) : options.recipe_text;
		plan = build_plan(parse_recipe(text, label), options.seed, options.computed_statistics,
		                  lora_scratch_root(options.out_dir));
		specs = output_specs(plan);
		if (!options.dry_run) layout = plan_output_layout(specs, exec.max_shard_bytes);
		if (!options.dry_run && !options.gguf && dist.size() == 1)
			journal = journal_identity(plan, text, options, layout);
	});

	MergeSummary summary;
	summary.tensors = plan.jobs.size();
	summary.warnings = plan.warnings;
	summary.rank = dist.rank();
	if (options.dry_run) {
		summary.plan_text = describe_plan(plan);
		return summary;
	}
	if (options.gguf) {
		write_gguf(plan, options, exec);
		summary.shards = 1;
		summary.bytes_written = fs::file_size(options.out_dir);
		summary.ranks.push_back({plan.jobs.size(), plan.input_bytes(), summary.bytes_written});
		summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
		return summary;
	}

	// Rank 0 alone checks and creates the output; the others write into the folder it made.
	std::optional<OutputFolder> folder;
	std::string tmp;
	dist.agree([&] {
		if (!dist.is_root()) return;
		if (options.resume) {
			// Checked before the folder is taken over, so a refused resume leaves it as it was.
			const auto from = find_interrupted_merge(options.out_dir, *journal);
			folder.emplace(options.out_dir, options.force, from);
			summary.resumed_shards = keep_verified_shards(folder->path(), layout, *journal, summary.warnings);
		} else {
			folder.emplace(options.out_dir, options.force);
		}
		tmp = folder->path().string();
	});
	const fs::path dir = dist.broadcast(tmp);
	// On failure, rank 0's folder (with every rank's shards) goes when `folder` does.
	dist.agree([&] { execute_plan(plan, dir, exec, journal ? &*journal : nullptr); });

	const auto owner = shard_ranks(layout, dist.size());
	const auto mine = rank_work(plan, layout, owner, dist.rank());
	const auto all = dist.all_gather({mine.tensors, mine.bytes_read, mine.bytes_written});
	for (size_t r = 0; r < dist.size(); r++)
		summary.ranks.push_back({all[3 * r], all[3 * r + 1], all[3 * r + 2]});

	// Every rank has finished its shards: rank 0 completes the folder and publishes it. The
	// others wait to hear how that went, so all exit with the same status.
	dist.agree([&] {
		if (!dist.is_root()) return;
		if (dist.size() > 1) write_shard_index(dir, specs, layout); // a single writer did already
		if (journal) fs::remove(dir / kShardJournalFile);
		write_other_files(plan, dir);
		folder->publish();
	});

	summary.shards = layout.shards.size();
	summary.bytes_written = plan.output_bytes();
	summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
	return summary;
}

} // namespace weld
