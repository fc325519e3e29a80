// The zipit merge method (mergekit's activation-based merge): models trained apart, matched unit
// by unit to the first model by activation correlations (nn/align_activation.h), permuted, then
// averaged with their weights. Runs in weld-torch; the recipe is kept as weld_recipe.yml.
#pragma once

#include "learned/learned_merge.h"
#include "plan/recipe.h"

#include <filesystem>
#include <string>
#include <vector>

namespace weld::learned {

struct ZipitOptions {
	std::filesystem::path data;
	bool absval = false;
	size_t samples = 256;
	std::vector<double> weights; // one per recipe model, in order
};

// Returns the text written as weld_recipe.yml. Throws weld::Error naming the model, field or data
// file at fault; nothing is written then.
std::string run_zipit(const Recipe& recipe, const ZipitOptions& zipit, const LearnedMergeOptions& options);

} // namespace weld::learned
