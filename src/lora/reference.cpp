#include "lora/reference.h"

#include "io/model.h"
#include "io/peft.h"
#include "lora/apply.h"
#include "util/error.h"

#include <fmt/format.h>

#include <atomic>
#include <unistd.h>

namespace weld {
namespace fs = std::filesystem;

std::optional<LoraReference> split_lora_reference(const std::string& reference) {
	const auto plus = reference.find('+');
	std::error_code ec;
	if (plus == std::string::npos || fs::is_directory(reference, ec)) return std::nullopt;
	LoraReference parts{reference.substr(0, plus), reference.substr(plus + 1)};
	if (parts.model.empty() || parts.adapter.empty() || parts.adapter.find('+') != std::string::npos)
		throw Error(fmt::format("model reference '{}': expected MODEL+ADAPTER (one '+' between a model and a LoRA "
		                        "adapter)",
		                        reference));
	return parts;
}

LoraAppliedModel::LoraAppliedModel(const LoraReference& reference, const fs::path& scratch_root) {
	const ModelFolder base(resolve_model_reference(reference.model));
	const PeftAdapter adapter = read_peft_adapter(resolve_model_reference(reference.adapter));
	check_adapter_fits(adapter, base, reference.model);

	static std::atomic<int> counter{0};
	const fs::path root = scratch_root.empty() ? fs::temp_directory_path() : scratch_root;
	dir_ = fs::absolute(root) / fmt::format(".weld-lora-{}-{}", getpid(), counter++);
	std::error_code ec;
	fs::remove_all(dir_, ec);
	if (!fs::create_directory(dir_, ec))
		throw Error(fmt::format("{}: cannot create the folder for {} with {} applied: {}", dir_.string(),
		                        reference.model, reference.adapter, ec.message()));
	try {
		write_lora_applied_model(base, adapter, dir_, std::nullopt, UINT64_MAX);
	} catch (...) {
		fs::remove_all(dir_, ec);
		throw;
	}
}

LoraAppliedModel::~LoraAppliedModel() {
	std::error_code ignored;
	fs::remove_all(dir_, ignored);
}

} // namespace weld
