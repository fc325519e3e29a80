// Hugging Face model folders: config.json plus model.safetensors, or shards listed in
// model.safetensors.index.json. Also resolves recipe model references to folders.
#pragma once

#include "io/safetensors.h"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace weld {

struct ModelConfig {
	std::string architecture; // architectures[0], or "" when absent
	std::optional<int64_t> num_hidden_layers;
	std::optional<int64_t> vocab_size;
	bool tie_word_embeddings = false;
	std::string text; // the file as read, for writing an updated copy
};
ModelConfig parse_model_config(std::string_view json_text, const std::string& label);

class ModelFolder {
public:
	// Opens and validates every safetensors file of the folder. Throws weld::Error naming the
	// folder/file when something is missing or corrupt.
	explicit ModelFolder(const std::filesystem::path& dir);

	struct Tensor {
		const SafetensorsFile* file;
		const TensorInfo* info;
	};

	const std::filesystem::path& dir() const { return dir_; }
	const std::optional<ModelConfig>& config() const { return config_; }
	bool sharded() const { return files_.size() > 1 || has_index_; }
	const Tensor* find(std::string_view name) const;
	// All tensors, in the order of the files and their data offsets.
	const std::vector<Tensor>& tensors() const { return tensors_; }

private:
	std::filesystem::path dir_;
	std::optional<ModelConfig> config_;
	bool has_index_ = false;
	std::vector<std::unique_ptr<SafetensorsFile>> files_;
	std::vector<Tensor> tensors_;
	std::unordered_map<std::string_view, size_t> by_name_;
};

// A recipe's model reference: an existing local folder, or a Hugging Face repo id "org/name"
// with optional "@revision", looked up in the local cache ($HF_HUB_CACHE, else $HF_HOME/hub,
// else ~/.cache/huggingface/hub; layout models--org--name/snapshots/<commit>/, refs/<name>).
// weld never downloads: a missing model is an error saying how to fetch it.
std::filesystem::path resolve_model_reference(const std::string& reference);

} // namespace weld
