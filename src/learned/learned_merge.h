// `weld merge` for methods that learn from data (MethodInfo::learned): weld hands such recipes
// to weld-torch, which learns the coefficients with the runtime, writes them into a plain
// task_arithmetic recipe (a λ per model, or per model and tensor as filter rules), and runs that
// recipe through the ordinary merge engine. The output's weld_recipe.yml is that recipe: the
// merge reruns from it without data. Torch-free header.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace weld::learned {

struct LearnedMergeOptions {
	std::filesystem::path recipe, out;
	bool force = false;
	unsigned threads = 1; // for the merge; learning runs on one thread, so any count gives the same bytes
	uint64_t seed = 0;
	bool quiet = false;
};

// Returns the task_arithmetic recipe it merged with. Throws weld::Error naming the recipe key,
// model or data file at fault; nothing is written then.
std::string run_learned_merge(const LearnedMergeOptions& options);

} // namespace weld::learned
