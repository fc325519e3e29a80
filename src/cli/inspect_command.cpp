#include "cli/commands.h"
#include "io/model.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <memory>

namespace weld::cli {
namespace {

struct InspectArgs {
	std::string path;
	bool json = false;
};

int run(const InspectArgs& args) {
	const auto dir = resolve_model_reference(args.path);
	const ModelFolder model(dir);
	uint64_t params = 0, bytes = 0;
	for (const auto& t : model.tensors()) {
		params += t.info->numel();
		bytes += t.info->nbytes();
	}
	const auto& config = model.config();
	const std::string arch = config ? config->architecture : "";

	if (args.json) {
		nlohmann::ordered_json out;
		out["path"] = dir.string();
		out["architecture"] = arch;
		if (config && config->num_hidden_layers) out["num_hidden_layers"] = *config->num_hidden_layers;
		if (config && config->vocab_size) out["vocab_size"] = *config->vocab_size;
		out["parameters"] = params;
		out["bytes"] = bytes;
		auto& tensors = out["tensors"] = nlohmann::ordered_json::array();
		for (const auto& t : model.tensors())
			tensors.push_back({{"name", t.info->name},
			                   {"dtype", dtype_safetensors_name(t.info->dtype)},
			                   {"shape", t.info->shape},
			                   {"shard", t.file->path().filename().string()}});
		fmt::print("{}\n", out.dump(2));
		return 0;
	}
	fmt::print("{}\n", dir.string());
	fmt::print("architecture: {}\n", arch.empty() ? "(no config.json)" : arch);
	if (config && config->num_hidden_layers) fmt::print("layers: {}\n", *config->num_hidden_layers);
	if (config && config->vocab_size) fmt::print("vocab size: {}\n", *config->vocab_size);
	fmt::print("parameters: {} ({:.3f} B), {} tensors, {} bytes\n\n", params, static_cast<double>(params) / 1e9,
	           model.tensors().size(), bytes);
	for (const auto& t : model.tensors())
		fmt::print("{:<60} {:<5} {:<16} {}\n", t.info->name, dtype_safetensors_name(t.info->dtype),
		           fmt::format("[{}]", fmt::join(t.info->shape, ", ")), t.file->path().filename().string());
	return 0;
}

} // namespace

std::function<int()> add_inspect_command(CLI::App& app) {
	auto args = std::make_shared<InspectArgs>();
	auto* cmd = app.add_subcommand("inspect", "List a model's tensors (name, dtype, shape, shard), parameter count "
	                                          "and architecture");
	cmd->add_option("path", args->path, "model folder or Hugging Face repo id in the local cache")->required();
	cmd->add_flag("--json", args->json, "machine-readable output");
	return [args] { return run(*args); };
}

} // namespace weld::cli
