// PEFT LoRA adapters as PEFT saves them: a folder with adapter_config.json and
// adapter_model.safetensors. A module `m` of the base model (its weight is the tensor `m.weight`)
// carries the tensors
//   base_model.model.m.lora_A.weight  [r, in]          (nn.Linear: W is [out, in])
//   base_model.model.m.lora_B.weight  [out, r]
//   base_model.model.m.lora_B.bias    [out]            (optional: PEFT's lora_bias)
//   base_model.model.m.lora_embedding_A  [r, vocab]    (nn.Embedding: W is [vocab, dim])
//   base_model.model.m.lora_embedding_B  [dim, r]
// and the modules listed in modules_to_save are stored whole, as base_model.model.<tensor name>.
// The update a module receives is scaling · B·A (transposed for embeddings and fan_in_fan_out),
// scaling = alpha / r, or alpha / sqrt(r) with use_rslora; see lora/apply.h.
#pragma once

#include "io/dtype.h"
#include "io/safetensors.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace weld {

struct PeftAdapterConfig {
	int64_t r = 8;
	double lora_alpha = 8;
	bool use_rslora = false;
	// target_modules as a list: a module is targeted when its name equals an entry or ends with
	// "." + entry. As a string (target_modules_regex): when the whole name matches the regex
	// ("all-linear": every module but lm_head).
	std::vector<std::string> target_modules;
	std::optional<std::string> target_modules_regex;
	// Per-module overrides of r and lora_alpha, in file order: a key applies to module m when m
	// matches `(.*\.)?(key)$`; the first such key wins (PEFT's get_pattern_key).
	std::vector<std::pair<std::string, int64_t>> rank_pattern;
	std::vector<std::pair<std::string, double>> alpha_pattern;
	bool fan_in_fan_out = false; // weights stored [in, out] (GPT-2's Conv1D)
	std::vector<std::string> modules_to_save;
	std::string base_model_name_or_path;
	std::string task_type;
	// The whole file as read; write_peft_adapter keeps its other keys.
	nlohmann::ordered_json raw = nlohmann::ordered_json::object();

	int64_t rank_of(std::string_view module) const;
	double alpha_of(std::string_view module) const;
	// alpha / r, or alpha / sqrt(r) with use_rslora, with the module's own r and alpha.
	double scaling_of(std::string_view module) const;
	// Whether target_modules names the module (PEFT's check_target_module_exists, without
	// layers_to_transform).
	bool targets(std::string_view module) const;
	// Whether the module is one of modules_to_save, or inside one.
	bool saves(std::string_view module) const;
};

// Parses adapter_config.json; `label` names the file in errors. Refuses what weld cannot apply
// faithfully: a peft_type other than LORA, DoRA (use_dora).
PeftAdapterConfig parse_peft_config(std::string_view json_text, const std::string& label);
// adapter_config.json text for the config: raw with the fields above set from the struct.
std::string peft_config_json(const PeftAdapterConfig& config);

// One adapted module: its factors as float32, row-major.
struct LoraModule {
	std::string name;       // as in the base model, e.g. model.layers.0.self_attn.q_proj
	bool embedding = false; // lora_embedding_A/B: the update is (B·A)ᵀ, of the weight's shape [in, out]
	uint64_t rank = 0;
	uint64_t in_features = 0;  // A's columns (the vocabulary for an embedding)
	uint64_t out_features = 0; // B's rows (the embedding width for an embedding)
	std::vector<float> a;      // [rank, in_features]
	std::vector<float> b;      // [out_features, rank]
	std::vector<float> bias;   // lora_B.bias [out_features], empty when the adapter has none
	double scaling = 1;        // alpha / r (or alpha / sqrt(r))

	// PEFT's tensor names for this module's factors.
	std::string a_tensor_name() const;
	std::string b_tensor_name() const;
};

// A tensor the adapter replaces whole (modules_to_save), read from the adapter file.
struct PeftSavedTensor {
	std::string name;                 // the base model's tensor name, e.g. lm_head.weight
	const TensorInfo* info = nullptr; // in PeftAdapter::file
};

struct PeftAdapter {
	std::filesystem::path dir;
	PeftAdapterConfig config;
	std::vector<LoraModule> modules;       // in the order of the file's tensors
	std::vector<PeftSavedTensor> saved;    // modules_to_save tensors
	std::shared_ptr<SafetensorsFile> file; // adapter_model.safetensors (the saved tensors' bytes)

	const LoraModule* find(std::string_view module) const;
	const PeftSavedTensor* find_saved(std::string_view tensor_name) const;
};

// Reads and checks an adapter folder: a missing or unparseable adapter_config.json or
// adapter_model.safetensors, a tensor that is neither a LoRA factor nor in modules_to_save, a
// factor without its partner, A's rank differing from B's or from the config's r — each is a
// weld::Error naming the folder, file or tensor. Whether it fits a base model is checked where
// it is applied (lora/apply.h).
PeftAdapter read_peft_adapter(const std::filesystem::path& dir);

// A whole tensor to store in an adapter (modules_to_save), under base_model.model.<name>.
struct PeftTensorBytes {
	std::string name; // the base model's tensor name
	DType dtype = DType::F32;
	std::vector<uint64_t> shape;
	std::span<const uint8_t> bytes;
};

// Writes adapter_config.json (peft_config_json) and adapter_model.safetensors (the factors in
// `dtype`, then `saved` as given) into the existing folder dir. Build dir with
// write_folder_atomically to publish it all or nothing.
void write_peft_adapter(const std::filesystem::path& dir, const PeftAdapterConfig& config,
                        const std::vector<LoraModule>& modules, DType dtype,
                        const std::vector<PeftTensorBytes>& saved = {});

} // namespace weld
