// The methods of this group, for the registry.
#include "methods/methods.h"

namespace weld {

std::vector<const MergeMethod*> literature_methods() {
	return {&pcb_method(), &widen_method(), &varm_method(), &mwa_method(), &localize_stitch_method()};
}

} // namespace weld
