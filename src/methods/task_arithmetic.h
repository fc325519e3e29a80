// The generalized task-arithmetic kernel (mergekit's GeneralizedTaskArithmeticMerge), shared by
// every method built from task vectors: task_arithmetic, ties, dare_*, della*, breadcrumbs*,
// consensus_*. Internal to the methods layer.
#pragma once

#include "methods/method.h"

#include <memory>
#include <string>

namespace weld {

// How each task vector (source - base) is sparsified before weighting.
enum class Sparsification {
	None,
	Magnitude,         // TIES: keep the top density fraction by |delta|
	Random,            // DARE: keep each element with probability density
	MagnitudeOutliers, // Breadcrumbs: drop the top gamma fraction, then keep the next density
	DellaMagprune,     // DELLA: per-row keep probability rising with magnitude rank (epsilon)
};

struct GtaConfig {
	std::string name, description, reference;
	Sparsification sparsification = Sparsification::None;
	bool sign_election = false; // TIES sign election on the weighted deltas ("sum" in mergekit)
	bool default_normalize = false, default_rescale = false;
	// Consensus merging (TALL masks): keep only the merged entries k or more tasks' masks need.
	// Adds the global parameter k and the model parameter tall_lambda; weight defaults to 1.
	bool tall_consensus = false;
};

std::unique_ptr<MergeMethod> make_gta_method(GtaConfig config);

} // namespace weld
