// mergekit's model+lora references in recipes: "org/model+org/adapter" or
// "path/to/model+path/to/adapter" (each part a local folder or a repo id in the HF cache, with
// an optional @revision). As mergekit does, the adapter is applied to the model first and the
// merge then reads the result: weld writes it, tensor by tensor, into a scratch folder that is
// removed when the merge is done.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace weld {

struct LoraReference {
	std::string model;
	std::string adapter;
};

// nullopt for a plain model reference (no '+', or an existing folder whose name holds one).
// Throws weld::Error for more than one '+' or an empty part.
std::optional<LoraReference> split_lora_reference(const std::string& reference);

// The model of a model+lora reference with its adapter applied (lora/apply.h), in a new scratch
// folder under scratch_root (the system's temporary folder when empty), removed with this object.
class LoraAppliedModel {
public:
	LoraAppliedModel(const LoraReference& reference, const std::filesystem::path& scratch_root);
	~LoraAppliedModel();
	LoraAppliedModel(const LoraAppliedModel&) = delete;
	LoraAppliedModel& operator=(const LoraAppliedModel&) = delete;

	const std::filesystem::path& dir() const { return dir_; }

private:
	std::filesystem::path dir_;
};

} // namespace weld
