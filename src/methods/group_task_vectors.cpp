// The methods of this group, for the registry.
#include "methods/methods.h"

namespace weld {

std::vector<const MergeMethod*> task_vector_methods() {
	return {&della_method(), &della_linear_method(), &breadcrumbs_method(),   &breadcrumbs_ties_method(),
	        &sce_method(),   &consensus_ta_method(), &consensus_ties_method()};
}

} // namespace weld
