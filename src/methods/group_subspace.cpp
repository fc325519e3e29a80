// The methods of this group, for the registry.
#include "methods/methods.h"

namespace weld {

std::vector<const MergeMethod*> subspace_methods() {
	return {&tsv_method(), &opcm_method(), &doge_method()};
}

} // namespace weld
