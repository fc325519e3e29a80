// The methods of this group, for the registry.
#include "methods/methods.h"

namespace weld {

std::vector<const MergeMethod*> literature_methods() {
	return {};
}

} // namespace weld
