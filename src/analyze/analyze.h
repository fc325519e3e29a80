// `weld analyze`'s computation: the task-vector statistics (analyze/statistics.h) of every tensor
// of a base model and its fine-tunes, and, given a recipe, what its merge keeps of each model's
// task vector. Streams: a tensor at a time per model, converted from the memory maps, as many
// side by side as the memory budget admits; pages are released once a tensor is done.
#pragma once

#include "analyze/statistics.h"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace weld::analyze {

struct AnalyzeOptions {
	std::string base;                // a model folder or cached Hugging Face repo id
	std::vector<std::string> models; // the fine-tunes
	std::filesystem::path recipe;    // empty: none
	unsigned threads = 1;
	uint64_t memory_budget = 1ull << 30;
	bool progress = true; // a progress display on stderr (util/progress.h)
};

// One output tensor of the recipe's merge, against the recipe's base model.
struct RecipeTensor {
	std::string name;
	TensorPlace place;
	uint64_t elements = 0;
	double base_sq = 0;                  // ‖θ_base‖²
	double merged_sq = 0;                // ‖θ_merged − θ_base‖²
	uint64_t unchanged = 0;              // entries the merge left at the base value
	std::vector<uint64_t> nonzero;       // per recipe model: entries with τ_ij ≠ 0
	std::vector<uint64_t> kept;          // of those, entries where the merged change has τ_ij's sign
	std::vector<double> mass, kept_mass; // the same as Σ|τ_ij|

	void add(const RecipeTensor& other);
	double kept_fraction(size_t i) const;      // kept / nonzero
	double kept_mass_fraction(size_t i) const; // kept_mass / mass
};

struct RecipeAnalysis {
	std::filesystem::path path;
	std::string method;
	std::vector<std::string> models; // the recipe's models other than its base, as it names them
	std::vector<RecipeTensor> tensors;
};

struct Analysis {
	std::string base;
	std::vector<std::string> models;
	std::vector<TensorStats> tensors; // in the base model's order
	std::optional<RecipeAnalysis> recipe;
};

// Throws weld::Error naming the model and tensor when a model lacks one of the base's tensors,
// has it in another shape or in a non-numeric dtype, or the recipe cannot be planned.
Analysis analyze_models(const AnalyzeOptions& options);

} // namespace weld::analyze
