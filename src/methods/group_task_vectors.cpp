// The methods of this group, for the registry.
#include "methods/methods.h"

namespace weld {

std::vector<const MergeMethod*> task_vector_methods() {
	return {};
}

} // namespace weld
