// mergekit's other generalized task-arithmetic methods (DELLA, Model Breadcrumbs) and consensus
// merging with TALL masks, all configurations of the kernel in task_arithmetic.cpp.
#include "methods/methods.h"
#include "methods/task_arithmetic.h"

namespace weld {
namespace {

constexpr const char* kDellaReference = "https://arxiv.org/abs/2406.11617";
constexpr const char* kBreadcrumbsReference = "https://arxiv.org/abs/2312.06795";
constexpr const char* kConsensusReference = "https://arxiv.org/abs/2405.07813";

} // namespace

const MergeMethod& della_method() {
	static const auto method = make_gta_method(
	    {.name = "della",
	     .description = "DELLA: magnitude-ranked random drop per row (MagPrune), rescale, TIES sign election",
	     .reference = kDellaReference,
	     .sparsification = Sparsification::DellaMagprune,
	     .sign_election = true,
	     .default_normalize = true,
	     .default_rescale = true});
	return *method;
}

const MergeMethod& della_linear_method() {
	static const auto method = make_gta_method(
	    {.name = "della_linear",
	     .description = "DELLA's magnitude-ranked random drop per row (MagPrune) and rescale, summed linearly",
	     .reference = kDellaReference,
	     .sparsification = Sparsification::DellaMagprune,
	     .default_rescale = true});
	return *method;
}

const MergeMethod& breadcrumbs_method() {
	static const auto method =
	    make_gta_method({.name = "breadcrumbs",
	                     .description = "Model Breadcrumbs: drop the largest (gamma) and smallest deltas, keep density",
	                     .reference = kBreadcrumbsReference,
	                     .sparsification = Sparsification::MagnitudeOutliers});
	return *method;
}

const MergeMethod& breadcrumbs_ties_method() {
	static const auto method =
	    make_gta_method({.name = "breadcrumbs_ties",
	                     .description = "Model Breadcrumbs sparsification with TIES sign election",
	                     .reference = kBreadcrumbsReference,
	                     .sparsification = Sparsification::MagnitudeOutliers,
	                     .sign_election = true});
	return *method;
}

const MergeMethod& consensus_ta_method() {
	static const auto method = make_gta_method(
	    {.name = "consensus_ta",
	     .description = "Consensus task arithmetic: keep the summed task vectors where k+ TALL masks agree",
	     .reference = kConsensusReference,
	     .tall_consensus = true});
	return *method;
}

const MergeMethod& consensus_ties_method() {
	static const auto method =
	    make_gta_method({.name = "consensus_ties",
	                     .description = "Consensus TIES: keep the TIES-merged task vector where k+ TALL masks agree",
	                     .reference = kConsensusReference,
	                     .sparsification = Sparsification::Magnitude,
	                     .sign_election = true,
	                     .tall_consensus = true});
	return *method;
}

} // namespace weld
