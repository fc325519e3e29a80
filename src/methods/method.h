// The interface every merge method implements, and the registry that finds methods by name.
//
// A method declares its parameters (mergekit's names and defaults) and merges one tensor at a
// time: it receives each source's values as float32 and writes float32. It never sees YAML,
// files or threads; the plan resolves parameters per tensor and the executor runs the jobs.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace weld {

enum class ParamType { Number, Bool };

struct ParamDef {
	std::string name;
	ParamType type = ParamType::Number;
	bool required = false;
	double default_value = 0; // used when not required and not set (bools: 0 or 1)
	bool has_default = true;  // false: the parameter is simply absent unless set (e.g. scale)
	std::string help;
	// Valid values (Number only): min_value <= v <= max_value, or min_value < v when min_exclusive.
	// The plan checks every resolved value and names the parameter, model and tensor when not.
	double min_value = -1e300;
	double max_value = 1e300;
	bool min_exclusive = false;
};

// Ignored: a base_model takes part only if listed among the models. Optional and Required: the
// base is added to every tensor's sources (as mergekit does), and Required refuses recipes without one.
enum class BaseModel { Ignored, Optional, Required };

struct MethodInfo {
	std::string name;
	std::string description;             // one line
	std::string reference;               // paper or source URL
	std::vector<ParamDef> global_params; // one value per tensor (e.g. normalize, lambda, t)
	std::vector<ParamDef> model_params;  // one value per source model (e.g. weight, density)
	BaseModel base = BaseModel::Ignored;
	// Number of sources a tensor must have, base included; 0 = no limit.
	size_t min_sources = 1;
	size_t max_sources = 0;
	// The output is one source, unchanged up to an optional scale (passthrough): tensors of any
	// dtype may be copied byte for byte.
	bool copy_only = false;
};

using ParamValues = std::map<std::string, double, std::less<>>;

// One output tensor's inputs.
struct MergeInput {
	std::string_view tensor_name;
	std::vector<uint64_t> shape;                 // of the output (row-major; rows = shape[0])
	std::vector<std::span<const float>> sources; // every source, in recipe order, same length
	int base_index = -1;                         // which source is the base model, -1 if none
	ParamValues params;                          // the method's global parameters
	std::vector<ParamValues> source_params;      // per source; base's may lack required ones
	uint64_t random_seed = 0;                    // --seed; combine with tensor_name for streams
	// Where a method may say how it computed this tensor (e.g. which SVD path); shown by
	// `weld merge --verbose`. nullptr when nobody listens.
	std::vector<std::string>* notes = nullptr;
};

class MergeMethod {
public:
	virtual ~MergeMethod() = default;
	virtual const MethodInfo& info() const = 0;
	// Writes the merged tensor into out (same length as each source). Throws weld::Error for
	// inputs the method cannot merge (naming the tensor).
	virtual void merge(const MergeInput& input, std::span<float> out) const = 0;
};

// nullptr when no method has that name.
const MergeMethod* find_method(std::string_view name);
// Every registered method, sorted by name.
std::vector<const MergeMethod*> all_methods();

} // namespace weld
