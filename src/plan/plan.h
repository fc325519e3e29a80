// From recipe to per-tensor jobs: resolves model references, opens the models, decides which
// source tensors feed each output tensor (layer slices renumbered), and resolves every
// parameter for every tensor (precedence, filters, gradients). Nothing here touches tensor data.
#pragma once

#include "io/model.h"
#include "io/tokenizer_files.h"
#include "methods/method.h"
#include "plan/recipe.h"
#include "tensor/row_remap.h"

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace weld {

class LoraAppliedModel;   // lora/reference.h
class GgufConvertedModel; // io/gguf_model.h

struct PlannedModel {
	std::string reference; // as written in the recipe
	// For a model+lora reference: the model with the adapter applied, which `folder` reads.
	std::shared_ptr<LoraAppliedModel> applied_lora;
	std::unique_ptr<ModelFolder> folder;
	// For a .gguf file: the model as a Hugging Face folder, which `folder` reads.
	std::shared_ptr<GgufConvertedModel> converted_gguf;
};

struct JobSource {
	size_t model = 0; // index into Plan::models
	const ModelFolder::Tensor* tensor = nullptr;
	uint64_t numel = 0; // elements used: fewer than the tensor's for a larger vocabulary
	// Its statistics (MethodInfo::statistics) for this tensor; nullptr where there are none.
	const ModelFolder::Tensor* statistics = nullptr;
};

struct TensorJob {
	std::string name; // output tensor name
	std::vector<uint64_t> shape;
	DType out_dtype = DType::F32;
	std::vector<JobSource> sources;
	int base_index = -1; // which source is the base model
	ParamValues params;
	std::vector<ParamValues> source_params;
	// Embedding-like tensors under a tokenizer setting: the sources' rows rearranged into the
	// output vocabulary before the method runs (nullptr: sources used as they are).
	std::shared_ptr<const RowRemap> rows;

	uint64_t numel() const;
	uint64_t out_nbytes() const { return numel() * dtype_size(out_dtype); }
	// The raw bytes of the single source can be written unchanged.
	bool is_plain_copy(const MergeMethod& method) const;
};

struct Plan {
	const MergeMethod* method = nullptr;
	Recipe recipe;
	std::vector<PlannedModel> models;
	int base_model = -1; // index into models
	// Per model, the `weld stats` folder its `stats` parameter names (nullptr: none).
	std::vector<std::unique_ptr<ModelFolder>> statistics;
	std::vector<std::string> statistics_kinds; // per model, its folder's kind ("" where none)
	std::vector<TensorJob> jobs;
	std::string config_json;   // config.json for the output ("" when none)
	TokenizerOutput tokenizer; // the tokenizer files to write
	std::vector<std::string> warnings;
	uint64_t seed = 0;

	uint64_t input_bytes() const;
	uint64_t output_bytes() const;
};

// Statistics folders computed for the merge from models' `data:` files (the CLI runs weld stats
// for them), by model reference as the recipe writes it.
using ComputedStatistics = std::map<std::string, std::string>;

// Throws weld::Error naming the recipe key, model or tensor at fault. Models referenced as
// model+lora are written with their adapter applied (and .gguf files as folders) under lora_scratch (default: the
// system's temporary folder) and removed when the plan goes away.
// A job's method input without its sources and statistics (the caller adds those).
MergeInput job_input(const Plan& plan, const TensorJob& job);

Plan build_plan(Recipe recipe, uint64_t seed, const ComputedStatistics& computed = {},
                const std::filesystem::path& lora_scratch = {});

// A human-readable listing of the plan (for --dry-run).
std::string describe_plan(const Plan& plan);

// Whether `weld merge` hands the recipe to the model runtime (weld-torch): info.learned, or the
// recipe sets info.learned_when's text parameter to its value.
bool learns_from_data(const MethodInfo& info, const Recipe& recipe);

// Checks a parameter's value against its definition: true/false for Bool, a number within
// [min_value, max_value] for Number. Throws weld::Error starting with `where` (e.g. "recipe")
// and naming the parameter and the tensor.
void check_param_value(const ParamDef& def, const ParamValue& value, std::string_view tensor, std::string_view where);

// Checks every parameter name of the recipe against the method: a name the method does not take
// but another weld method does is ignored, with a warning returned (as mergekit ignores it); any
// other name throws weld::Error naming where it is, with the closest known name.
std::vector<std::string> check_parameter_names(const MethodInfo& info, const Recipe& recipe);

} // namespace weld
