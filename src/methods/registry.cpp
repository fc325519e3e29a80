// The one table of merge methods.
#include "methods/methods.h"

#include <algorithm>

namespace weld {
namespace {

// Built on first use, so no static-initialization order between translation units matters.
const std::vector<const MergeMethod*>& sorted_methods() {
	static const std::vector<const MergeMethod*> methods = [] {
		std::vector<const MergeMethod*> all = {&linear_method(),
		                                       &task_arithmetic_method(),
		                                       &ties_method(),
		                                       &dare_linear_method(),
		                                       &dare_ties_method(),
		                                       &della_method(),
		                                       &della_linear_method(),
		                                       &breadcrumbs_method(),
		                                       &breadcrumbs_ties_method(),
		                                       &sce_method(),
		                                       &slerp_method(),
		                                       &nuslerp_method(),
		                                       &multislerp_method(),
		                                       &karcher_method(),
		                                       &model_stock_method(),
		                                       &nearswap_method(),
		                                       &ram_method(),
		                                       &ramplus_tl_method(),
		                                       &arcee_fusion_method(),
		                                       &passthrough_method(),
		                                       &cabs_method(),
		                                       &core_space_method(),
		                                       &lrp_method(),
		                                       &consensus_ta_method(),
		                                       &consensus_ties_method(),
		                                       &pcb_method(),
		                                       &widen_method(),
		                                       &varm_method(),
		                                       &mwa_method(),
		                                       &localize_stitch_method(),
		                                       &tsv_method(),
		                                       &opcm_method(),
		                                       &fisher_method(),
		                                       &regmean_method(),
		                                       &ota_method(),
		                                       &ffg_method(),
		                                       &rcp_method(),
		                                       &adamerging_method(),
		                                       &fw_merging_method(),
		                                       &regmean_pp_method(),
		                                       &concrete_method(),
		                                       &dam_method(),
		                                       &expert_merging_method(),
		                                       &twin_method(),
		                                       &doge_method(),
		                                       &zipit_method()};
		std::sort(all.begin(), all.end(),
		          [](const MergeMethod* a, const MergeMethod* b) { return a->info().name < b->info().name; });
		return all;
	}();
	return methods;
}

} // namespace

const MergeMethod* find_method(std::string_view name) {
	for (const MergeMethod* method : sorted_methods())
		if (method->info().name == name) return method;
	return nullptr;
}

std::vector<const MergeMethod*> all_methods() {
	return sorted_methods();
}

} // namespace weld
