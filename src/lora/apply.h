// Applying a PEFT LoRA adapter to a model: W' = W + scaling · B·A for every adapted module (the
// update transposed, (B·A)ᵀ, for embeddings and fan_in_fan_out weights, as PEFT merges them),
// lora_B.bias · scaling added to the module's bias, modules_to_save tensors replacing the base's,
// every other tensor copied. Computed in float32 and rounded once to the output dtype.
#pragma once

#include "io/dtype.h"
#include "io/model.h"
#include "io/peft.h"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace weld {

// scaling · B·A in the layout of the module's weight: [out, in], or [in, out] when transposed
// (embeddings, fan_in_fan_out).
std::vector<float> lora_delta(const LoraModule& module, bool transposed);

// The shape the module's weight must have in the base model.
std::vector<uint64_t> lora_weight_shape(const LoraModule& module, bool fan_in_fan_out);

// Checks that the adapter fits the base before anything is written: every adapted module and
// saved tensor exists in the base with the shape the factors imply, and target_modules names
// some module of the base. Errors name the adapter, the module or tensor and both shapes.
void check_adapter_fits(const PeftAdapter& adapter, const ModelFolder& base, const std::string& base_label);

// Writes the base with the adapter applied into the existing folder dir: the weights (one tensor
// at a time, so memory holds one tensor and the adapter), config.json (torch_dtype set when
// dtype is given) and the tokenizer files. dtype: the output dtype of float tensors (default:
// each tensor's own).
void write_lora_applied_model(const ModelFolder& base, const PeftAdapter& adapter, const std::filesystem::path& dir,
                              std::optional<DType> dtype, uint64_t max_shard_bytes);

struct ApplyLoraOptions {
	std::string base;    // model reference (folder or HF cache repo id)
	std::string adapter; // adapter reference (folder or HF cache repo id)
	std::filesystem::path out;
	bool force = false;
	std::optional<DType> dtype;
	uint64_t max_shard_bytes = 5'000'000'000;
};

// weld apply-lora: the applied model written as a new folder, all or nothing.
void apply_lora(const ApplyLoraOptions& options);

} // namespace weld
