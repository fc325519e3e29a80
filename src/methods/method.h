// The interface every merge method implements, and the registry that finds methods by name.
//
// A method declares its parameters (mergekit's names and defaults) and merges one tensor at a
// time: it receives each source's values as float32 and writes float32. It never sees YAML,
// files or threads; the plan resolves parameters per tensor and the executor runs the jobs.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace weld {

// Text: a string set once per recipe or per model (a path, a choice such as granularity: layer),
// never per tensor; methods read Text parameters outside merge() (the plan or the runtime does).
enum class ParamType { Number, Bool, Text };

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
	// Statistics every model other than the base brings (`parameters: {stats: FOLDER}`, a
	// `weld stats` output of this kind): "fisher" (same shape as each tensor) or "gram" ([in, in]
	// for a 2-D weight [out, in]; other tensors have none), or several kinds separated by '|'
	// when the kind gives a model its role (rcp: "fisher|gradient"; the method reads
	// MergeInput::statistics_kinds). Empty: the method takes none.
	std::string statistics = {};
	// Learned from data by the runtime (weld-torch) before its tensors are merged, as AdaMerging:
	// `weld merge` hands the recipe over to weld-torch.
	bool learned = false;
	// A text parameter and value that make a recipe learned (localize_stitch: {"mode", "learned"});
	// empty: `learned` alone decides.
	std::pair<std::string, std::string> learned_when = {};
	// A global Text parameter listing model references in the order the method takes them
	// (cabs: pruning_order). The plan gives every source a per-model value of the same name: its
	// place in the list, -1 where the list leaves it out; without the list, its place among the
	// recipe's references sorted by name (mergekit's default). Empty: none.
	std::string model_order = {};
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
	// Per source, its statistics for this tensor (MethodInfo::statistics) as float32; an empty
	// span where the source has none (the base, or a tensor the kind does not cover).
	std::vector<std::span<const float>> statistics;
	// Per source, the kind of its statistics folder ("" where it has none).
	std::vector<std::string_view> statistics_kinds;
	// Where a method may say how it computed this tensor (e.g. which SVD path); shown by
	// `weld merge --verbose`. nullptr when nobody listens.
	std::vector<std::string>* notes = nullptr;
};

// Tensors are streamed in blocks of this many elements (the last block of a tensor is shorter).
// Fixed, so per-block partial sums combine the same way for any thread count.
constexpr uint64_t kBlockElements = 16384;

inline uint64_t block_count(uint64_t elements) {
	return (elements + kBlockElements - 1) / kBlockElements;
}

// Elements [offset, offset + size) of every source of one tensor, in float32.
struct Block {
	uint64_t index = 0; // offset / kBlockElements
	uint64_t offset = 0;
	std::span<const std::span<const float>> sources; // in recipe order, all of the same size
	uint64_t size() const { return sources.empty() ? 0 : sources[0].size(); }
};

// A merge of one tensor whose output element j needs only element j of each source, once a few
// statistics of the whole tensor are known (norms, magnitude thresholds). The executor streams
// such tensors block by block straight from the memory maps, on all threads, without a
// whole-tensor copy: first every statistics pass over all blocks, then the output pass.
class BlockMerge {
public:
	virtual ~BlockMerge() = default;
	// Statistics passes before the output pass (may be 0).
	virtual int stat_passes() const = 0;
	// Whether pass (< stat_passes()) is needed after all; asked once the passes before it ended.
	virtual bool wants_pass(int pass) const {
		(void)pass;
		return true;
	}
	// Called once for every block in each wanted statistics pass, from any thread and in any
	// order; worker (< the workers given at creation) identifies the calling thread.
	virtual void observe(int pass, const Block& block, unsigned worker) = 0;
	// Called once after every block of a wanted pass was observed.
	virtual void end_pass(int pass) = 0;
	// The output pass: writes block's elements of the merged tensor (out.size() == block.size()).
	virtual void merge(const Block& block, std::span<float> out, unsigned worker) = 0;
	// A pass failed on another thread: a method whose observe() waits for other blocks stops waiting.
	virtual void abandon() {}
	// After the output pass: how the method computed this tensor (shown by `weld merge --verbose`,
	// like MergeInput::notes).
	virtual std::vector<std::string> notes() const { return {}; }
};

class MergeMethod {
public:
	virtual ~MergeMethod() = default;
	virtual const MethodInfo& info() const = 0;
	// Writes the merged tensor into out (same length as each source). Throws weld::Error for
	// inputs the method cannot merge (naming the tensor).
	virtual void merge(const MergeInput& input, std::span<float> out) const = 0;
	// For methods that can merge this tensor in blocks: a BlockMerge for it, else nullptr (the
	// default: merge() needs the whole tensor). input carries no source values, only the shape,
	// parameters, base index, seed and the parameters of source_count sources of `elements`
	// elements each. Throws weld::Error like merge() for inputs the method cannot merge.
	virtual std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                                unsigned workers) const {
		(void)input, (void)source_count, (void)elements, (void)workers;
		return nullptr;
	}
	// Bytes the method itself holds while merging one such tensor (its own matrices, LAPACK's
	// workspace), beyond the executor's float32 copies (or blocks) of the sources and the output:
	// counted against --memory-budget. input as for block_merge. Default: none worth counting.
	virtual uint64_t working_bytes(const MergeInput& input, size_t source_count, uint64_t elements) const {
		(void)input, (void)source_count, (void)elements;
		return 0;
	}
};

// Where statistics of a kind come from, for messages: "the optimizer/ folder of `weld train
// --save-optimizer`" for exp_avg_sq, else "a `weld stats --kind KIND` output".
// For several kinds ("fisher|gradient"), each kind's origin.
inline std::string statistics_origin(const std::string& kind) {
	if (const auto bar = kind.find('|'); bar != std::string::npos)
		return statistics_origin(kind.substr(0, bar)) + " or " + statistics_origin(kind.substr(bar + 1));
	return kind == "exp_avg_sq" ? "the optimizer/ folder of `weld train --save-optimizer`"
	                            : "a `weld stats --kind " + kind + "` output";
}

// nullptr when no method has that name.
const MergeMethod* find_method(std::string_view name);
// Every registered method, sorted by name.
std::vector<const MergeMethod*> all_methods();

} // namespace weld
