// The one table of merge methods.
#include "methods/methods.h"

#include <algorithm>

namespace weld {
namespace {

// Built on first use, so no static-initialization order between translation units matters.
const std::vector<const MergeMethod*>& sorted_methods() {
	static const std::vector<const MergeMethod*> methods = [] {
		std::vector<const MergeMethod*> all = {&linear_method(),      &task_arithmetic_method(), &ties_method(),
		                                       &dare_linear_method(), &dare_ties_method(),       &slerp_method(),
		                                       &passthrough_method()};
		for (auto group : {task_vector_methods, mergekit_extra_methods, subspace_methods, literature_methods})
			for (const MergeMethod* method : group())
				all.push_back(method);
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
