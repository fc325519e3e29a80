// Statistics from models' `data:` files, computed for `weld merge` by weld stats (in weld-torch)
// and cached beside the output, so that a rerun with the same models and data reuses them.
#pragma once

#include "plan/plan.h"

#include <filesystem>
#include <string>

namespace weld::cli {

// For each model the recipe gives `data:` (and no `stats:`) under a method that reads fisher or
// gram statistics: the folder `<out's parent>/.<out's name>.weld-stats/<key>.<kind>`, computed
// first unless it exists. The key hashes the model folder, the data file's path, size and
// modification time, and the kind. Nothing for other recipes.
ComputedStatistics compute_recipe_statistics(const std::string& recipe_path, const std::filesystem::path& out,
                                             bool quiet);

} // namespace weld::cli
