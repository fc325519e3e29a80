// Internal to the methods layer: the factories the registry lists, and the input checks and
// parameter look-ups every method shares.
#pragma once

#include "methods/method.h"

#include <optional>
#include <vector>

namespace weld {

// One factory per method; registry.cpp lists them all.
// mergekit's methods
const MergeMethod& linear_method();
const MergeMethod& task_arithmetic_method();
const MergeMethod& ties_method();
const MergeMethod& dare_linear_method();
const MergeMethod& dare_ties_method();
const MergeMethod& della_method();
const MergeMethod& della_linear_method();
const MergeMethod& breadcrumbs_method();
const MergeMethod& breadcrumbs_ties_method();
const MergeMethod& sce_method();
const MergeMethod& slerp_method();
const MergeMethod& nuslerp_method();
const MergeMethod& multislerp_method();
const MergeMethod& karcher_method();
const MergeMethod& model_stock_method();
const MergeMethod& nearswap_method();
const MergeMethod& ram_method();
const MergeMethod& ramplus_tl_method();
const MergeMethod& arcee_fusion_method();
const MergeMethod& passthrough_method();
// mergekit's open pull requests (#568, #646, #677)
const MergeMethod& cabs_method();
const MergeMethod& core_space_method();
const MergeMethod& lrp_method();
// data-free methods of the research literature
const MergeMethod& consensus_ta_method();
const MergeMethod& consensus_ties_method();
const MergeMethod& pcb_method();
const MergeMethod& widen_method();
const MergeMethod& varm_method();
const MergeMethod& mwa_method();
const MergeMethod& localize_stitch_method();
const MergeMethod& tsv_method();
const MergeMethod& opcm_method();
const MergeMethod& doge_method();
// methods that learn from statistics of data (weld stats)
const MergeMethod& fisher_method();
const MergeMethod& regmean_method();
const MergeMethod& ota_method();
const MergeMethod& ffg_method();
const MergeMethod& rcp_method();
// methods that learn from data with the model runtime (src/learned)
const MergeMethod& adamerging_method();
const MergeMethod& fw_merging_method();
const MergeMethod& regmean_pp_method();
const MergeMethod& concrete_method();
const MergeMethod& dam_method();
const MergeMethod& expert_merging_method();
const MergeMethod& twin_method();
const MergeMethod& zipit_method();

// Throws weld::Error naming the tensor unless the sources are non-empty, equally long, as long
// as out, within info's source-count limits, and (for BaseModel::Required) base_index is valid.
void check_merge_input(const MethodInfo& info, const MergeInput& input, std::span<const float> out);

// The source-count and base checks of check_merge_input, for block_merge (count sources).
void check_source_count(const MethodInfo& info, const MergeInput& input, size_t count);

// Runs a block merge over whole float32 tensors on the calling thread (worker 0): how methods
// that stream in blocks implement merge() with the same code.
void merge_in_blocks(BlockMerge& kernel, const MergeInput& input, std::span<float> out);

// A method the model runtime runs (MethodInfo::learned): its table entry declares the parameters;
// merge() explains that `weld merge` (built with libtorch) runs it, as weld-torch does.
class RuntimeMethod final : public MergeMethod {
public:
	explicit RuntimeMethod(MethodInfo info) : info_(std::move(info)) {}
	const MethodInfo& info() const override { return info_; }
	void merge(const MergeInput& input, std::span<float> out) const override;

private:
	MethodInfo info_;
};

// The required global `data` of the methods that adapt on unlabeled prompts (AdaMerging, Concrete).
ParamDef unlabeled_prompts_param();

// `before`, then the per-model `data` and `stats` parameters of a method that reads statistics;
// stats_help says what the folder holds.
std::vector<ParamDef> statistics_source_params(const std::string& stats_help, std::vector<ParamDef> before = {});

// Indices of the sources other than the base, in recipe order.
std::vector<size_t> model_indices(const MergeInput& input);
// The same for a block merge, whose input carries source_count sources but not their values.
std::vector<size_t> model_indices(const MergeInput& input, size_t source_count);

// A global parameter's value: as set, else its default. Throws weld::Error when a required one
// is missing. name must be one of info.global_params.
double global_param(const MethodInfo& info, const MergeInput& input, std::string_view name);

// A per-source parameter's value: as set, else its default, else nullopt (has_default false).
// Throws weld::Error naming the tensor and source when a required one is missing.
std::optional<double> source_param(const MethodInfo& info, const MergeInput& input, size_t source,
                                   std::string_view name);

} // namespace weld
