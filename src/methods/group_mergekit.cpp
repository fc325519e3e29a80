// The methods of this group, for the registry.
#include "methods/methods.h"

namespace weld {

std::vector<const MergeMethod*> mergekit_extra_methods() {
	return {&model_stock_method(), &nuslerp_method(), &multislerp_method(), &karcher_method(),
	        &nearswap_method(),    &ram_method(),     &ramplus_tl_method(), &arcee_fusion_method()};
}

} // namespace weld
