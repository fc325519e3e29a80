// A whole merge: recipe file in, complete Hugging Face model folder out. The folder is built
// under a temporary name beside the target and renamed into place only once complete; on
// failure nothing is left behind.
//
// Distributed (several ranks of an MPI job, each running run_merge with the same options):
// every rank plans the merge; rank 0 checks the output and makes the temporary folder; each rank
// writes the shards shard_ranks() gives it, reading only their inputs; then rank 0 writes the
// shard index and the other files and renames the folder into place. A step that fails on any
// rank fails on all, with that rank's message, and rank 0 removes the temporary folder.
#pragma once

#include "exec/distributed.h"
#include "exec/executor.h"
#include "io/gguf.h"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace weld {

struct MergeOptions {
	std::filesystem::path recipe_path;
	std::string recipe_text;                // when not empty, the recipe itself (recipe_path only names it in errors)
	ComputedStatistics computed_statistics; // for models with `data:` (cli/statistics_cache.h)
	std::filesystem::path out_dir;
	bool force = false;   // replace an existing output
	bool dry_run = false; // print the plan, write nothing
	// Continue the merge of out_dir that a killed run left in its temporary folder: the shards
	// its journal lists (io/shard_journal.h) that still check out are kept, the rest are
	// written; the bytes are those of an uninterrupted run. The recipe, the options that change
	// bytes and the input files must be the same. A single process, safetensors only.
	bool resume = false;
	// Write one GGUF file at out_dir instead of a folder (io/gguf_model.h); gguf_type: the
	// weights' type (default: that of the merge's output dtype). A single process only.
	bool gguf = false;
	std::optional<GgmlType> gguf_type;
	uint64_t seed = 0;
	ExecOptions exec;                         // rank and ranks come from `distributed`
	const Distributed* distributed = nullptr; // null: a single process
};

// What one rank did: its tensors, the input bytes they read, the shard bytes it wrote.
struct RankWork {
	uint64_t tensors = 0;
	uint64_t bytes_read = 0;
	uint64_t bytes_written = 0;
};

struct MergeSummary {
	std::string plan_text; // the --dry-run listing
	size_t tensors = 0;
	size_t shards = 0;
	uint64_t bytes_written = 0;
	double seconds = 0;
	std::vector<std::string> warnings;
	size_t resumed_shards = 0;   // with resume: shards kept from the interrupted run
	unsigned rank = 0;           // this process's rank; only rank 0 need report
	std::vector<RankWork> ranks; // per rank, in rank order (one entry for a single process)
};

MergeSummary run_merge(const MergeOptions& options);

// The default of --memory-budget: a quarter of the machine's memory (2 GB when unknown).
uint64_t default_memory_budget();

} // namespace weld
