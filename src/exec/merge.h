// A whole merge: recipe file in, complete Hugging Face model folder out. The folder is built
// under a temporary name beside the target and renamed into place only once complete; on
// failure nothing is left behind.
#pragma once

#include "exec/executor.h"

#include <cstdint>
#include <filesystem>
#include <string>

namespace weld {

struct MergeOptions {
	std::filesystem::path recipe_path;
	std::filesystem::path out_dir;
	bool force = false;   // replace an existing output
	bool dry_run = false; // print the plan, write nothing
	uint64_t seed = 0;
	ExecOptions exec;
};

struct MergeSummary {
	std::string plan_text; // the --dry-run listing
	size_t tensors = 0;
	size_t shards = 0;
	uint64_t bytes_written = 0;
	double seconds = 0;
	std::vector<std::string> warnings;
};

MergeSummary run_merge(const MergeOptions& options);

} // namespace weld
