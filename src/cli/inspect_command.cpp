#include "cli/commands.h"
#include "io/model.h"
#include "io/peft.h"
#include "lora/overlap.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <memory>

namespace weld::cli {
namespace {

struct InspectArgs {
	std::vector<std::string> paths;
	bool json = false;
};

int inspect_model(const std::string& path, const InspectArgs& args) {
	const auto dir = resolve_model_reference(path);
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

bool is_adapter(const std::string& path) {
	return std::filesystem::exists(std::filesystem::path(path) / "adapter_config.json");
}

struct OverlapSummary {
	double mean_overlap = 0, mean_cosine = 0;
	const lora::PairOverlap* most = nullptr; // the pair of largest overlap
	size_t pairs = 0;
};

// Means over the pairs where both updates are non-zero.
OverlapSummary summarize(const std::vector<lora::PairOverlap>& overlaps) {
	OverlapSummary s;
	for (const auto& o : overlaps) {
		if (o.value.rank1 == 0 || o.value.rank2 == 0) continue;
		++s.pairs;
		s.mean_overlap += o.value.overlap;
		s.mean_cosine += o.value.max_cosine;
		if (!s.most || o.value.overlap > s.most->value.overlap) s.most = &o;
	}
	if (s.pairs) {
		s.mean_overlap /= static_cast<double>(s.pairs);
		s.mean_cosine /= static_cast<double>(s.pairs);
	}
	return s;
}

void print_adapter_json(const std::vector<PeftAdapter>& adapters, const std::vector<lora::PairOverlap>& overlaps,
                        const OverlapSummary& summary) {
	nlohmann::ordered_json out;
	auto& list = out["adapters"] = nlohmann::ordered_json::array();
	for (const auto& a : adapters)
		list.push_back({{"path", a.dir.string()}, {"r", a.config.r}, {"modules", a.modules.size()}});
	auto& pairs = out["overlaps"] = nlohmann::ordered_json::array();
	for (const auto& o : overlaps)
		pairs.push_back({{"module", o.module},
		                 {"adapters", {o.first, o.second}},
		                 {"ranks", {o.value.rank1, o.value.rank2}},
		                 {"overlap", o.value.overlap},
		                 {"max_cosine", o.value.max_cosine}});
	out["summary"] = {
	    {"pairs", summary.pairs}, {"mean_overlap", summary.mean_overlap}, {"mean_max_cosine", summary.mean_cosine}};
	fmt::print("{}\n", out.dump(2));
}

// Adapter folders: their modules, and per module the pairwise overlap of their ΔW column spaces.
int inspect_adapters(const InspectArgs& args) {
	std::vector<PeftAdapter> adapters;
	for (const auto& path : args.paths)
		adapters.push_back(read_peft_adapter(path));
	const auto overlaps = lora::adapter_overlaps(adapters);
	const auto summary = summarize(overlaps);
	if (args.json) {
		print_adapter_json(adapters, overlaps, summary);
		return 0;
	}
	for (size_t i = 0; i < adapters.size(); ++i)
		fmt::print("adapter {}: {} (r {}, lora_alpha {:g}, {} modules)\n", i, adapters[i].dir.string(),
		           adapters[i].config.r, adapters[i].config.lora_alpha, adapters[i].modules.size());
	if (adapters.size() < 2) return 0;
	fmt::print("\n{:<60} {:<5} {:<7} {:>8} {:>10}\n", "module", "pair", "ranks", "overlap", "max cosine");
	for (const auto& o : overlaps)
		fmt::print("{:<60} {:<5} {:<7} {:>8.4f} {:>10.4f}\n", o.module, fmt::format("{}-{}", o.first, o.second),
		           fmt::format("{}/{}", o.value.rank1, o.value.rank2), o.value.overlap, o.value.max_cosine);
	fmt::print("\nsummary: {} adapters, {} module pairs: mean overlap {:.4f}, mean max cosine {:.4f}", adapters.size(),
	           summary.pairs, summary.mean_overlap, summary.mean_cosine);
	if (summary.most)
		fmt::print(", largest overlap {:.4f} ({} {}-{})", summary.most->value.overlap, summary.most->module,
		           summary.most->first, summary.most->second);
	fmt::print("\n");
	return 0;
}

int run(const InspectArgs& args) {
	const size_t adapters = static_cast<size_t>(std::count_if(args.paths.begin(), args.paths.end(), is_adapter));
	if (adapters == args.paths.size()) return inspect_adapters(args);
	if (args.paths.size() == 1) return inspect_model(args.paths.front(), args);
	throw Error("inspect takes one model folder, or adapter folders (with adapter_config.json) to compare");
}

} // namespace

std::function<int()> add_inspect_command(CLI::App& app) {
	auto args = std::make_shared<InspectArgs>();
	auto* cmd = app.add_subcommand("inspect", "List a model's tensors (name, dtype, shape, shard), parameter count "
	                                          "and architecture; or compare LoRA adapters' subspaces");
	cmd->add_option("paths", args->paths,
	                "model folder or Hugging Face repo id in the local cache; or adapter folders, whose ΔW = B·A "
	                "column spaces are compared per module and pair")
	    ->required();
	cmd->add_flag("--json", args->json, "machine-readable output");
	return [args] { return run(*args); };
}

} // namespace weld::cli
