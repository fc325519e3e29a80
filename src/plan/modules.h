// mergekit's `modules:` (multimodal models): which tensors each named module owns. A module is
// a tensor-name prefix: mergekit's own prefixes for the multimodal architectures it defines
// (text_decoder, vision_tower, ...), else `default` for every tensor and any other name for
// the tensors under "NAME." (mergekit names the modules it infers by such prefixes).
#pragma once

#include "io/model.h"
#include "plan/recipe.h"

#include <string>
#include <string_view>
#include <vector>

namespace weld {

struct PlanModule {
	std::string name;
	std::string prefix;     // "" for default: every tensor no longer prefix claims
	std::string layers_key; // config.json key of its layer count ("a.b" nested; "" none)
	int spec = -1;          // index into Recipe::modules, -1 when the recipe leaves it out
};

class ModuleMap {
public:
	// Throws weld::Error naming the module or tensor: a name the architecture does not define, a
	// module that owns no tensor of `model`, or a tensor of `model` no module of the recipe owns.
	ModuleMap(const ModelFolder& model, const std::string& reference, const std::vector<ModuleSpec>& specs);

	// The module owning the tensor (the longest prefix that matches), -1 when none does.
	int owner(std::string_view tensor) const;
	const std::vector<PlanModule>& modules() const { return modules_; }
	// The module of the recipe's specs[i].
	size_t of_spec(size_t i) const { return by_spec_[i]; }

private:
	std::vector<PlanModule> modules_;
	std::vector<size_t> by_spec_;
};

} // namespace weld
