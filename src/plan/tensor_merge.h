// One tensor merged by a data-free method outside any recipe, as the plan and the executor
// would merge it: the Python module's weld.merge_tensors. Parameters are checked as a recipe's
// are (type, range, required), the sources are the models then the base (a recipe's order when
// the base is not among its models), and the method's own merge() computes the result.
#pragma once

#include "methods/method.h"
#include "plan/recipe.h"

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace weld {

// A parameter as a caller gives it: one value for every model (and the base), or one per model
// (the base then takes the default).
struct ParamArgument {
	std::vector<ParamValue> values = {};
	bool per_model = false;
};

struct TensorMergeRequest {
	std::string method;
	std::string tensor_name = "tensor"; // what a recipe's tensor would be called (random streams)
	std::vector<uint64_t> shape = {};   // of every model, the base and the output
	std::vector<std::span<const float>> models = {};
	std::optional<std::span<const float>> base = {};
	std::map<std::string, ParamArgument, std::less<>> params = {};
	uint64_t seed = 0;            // random methods
	bool allow_nonfinite = false; // merge NaN/Inf inputs instead of refusing them
};

// Whether a method merges tensors from their values alone: no statistics of data, nothing
// learned by the model runtime (what merge_tensor runs).
bool is_data_free(const MethodInfo& info);

// Writes the merged tensor into out (the shape's element count). Throws weld::Error (starting
// "merge_tensors: ") for an unknown method, one that needs data, statistics or text parameters,
// a base the method needs or ignores, a parameter unknown, of the wrong type, out of range or
// missing, sources of the wrong size or number, and NaN or ±Inf inputs (unless allowed).
void merge_tensor(const TensorMergeRequest& request, std::span<float> out);

} // namespace weld
