#include "cli/commands.h"
#include "exec/describe.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <memory>

namespace weld::cli {
namespace {

struct InspectArgs {
	std::vector<std::string> paths;
	bool json = false;
};

// The text form of describe_model's JSON.
void print_model(const nlohmann::ordered_json& model) {
	const auto arch = model["architecture"].get<std::string>();
	fmt::print("{}\n", model["path"].get<std::string>());
	fmt::print("architecture: {}\n", arch.empty() ? "(no config.json)" : arch);
	if (model.contains("num_hidden_layers")) fmt::print("layers: {}\n", model["num_hidden_layers"].get<int64_t>());
	if (model.contains("vocab_size")) fmt::print("vocab size: {}\n", model["vocab_size"].get<int64_t>());
	const auto params = model["parameters"].get<uint64_t>();
	fmt::print("parameters: {} ({:.3f} B), {} tensors, {} bytes\n\n", params, static_cast<double>(params) / 1e9,
	           model["tensors"].size(), model["bytes"].get<uint64_t>());
	for (const auto& t : model["tensors"])
		fmt::print("{:<60} {:<5} {:<16} {}\n", t["name"].get<std::string>(), t["dtype"].get<std::string>(),
		           fmt::format("[{}]", fmt::join(t["shape"].get<std::vector<uint64_t>>(), ", ")),
		           t["shard"].get<std::string>());
}

// Adapter folders: their modules, and per module the pairwise overlap of their ΔW column spaces.
void print_adapters(const AdapterComparison& c) {
	for (size_t i = 0; i < c.adapters.size(); ++i)
		fmt::print("adapter {}: {} (r {}, lora_alpha {:g}, {} modules)\n", i, c.adapters[i].dir.string(),
		           c.adapters[i].config.r, c.adapters[i].config.lora_alpha, c.adapters[i].modules.size());
	if (c.adapters.size() < 2) return;
	fmt::print("\n{:<60} {:<5} {:<7} {:>8} {:>10}\n", "module", "pair", "ranks", "overlap", "max cosine");
	for (const auto& o : c.overlaps)
		fmt::print("{:<60} {:<5} {:<7} {:>8.4f} {:>10.4f}\n", o.module, fmt::format("{}-{}", o.first, o.second),
		           fmt::format("{}/{}", o.value.rank1, o.value.rank2), o.value.overlap, o.value.max_cosine);
	fmt::print("\nsummary: {} adapters, {} module pairs: mean overlap {:.4f}, mean max cosine {:.4f}",
	           c.adapters.size(), c.pairs, c.mean_overlap, c.mean_max_cosine);
	if (c.most) {
		const auto& most = c.overlaps[*c.most];
		fmt::print(", largest overlap {:.4f} ({} {}-{})", most.value.overlap, most.module, most.first, most.second);
	}
	fmt::print("\n");
}

int run(const InspectArgs& args) {
	if (args.json) {
		fmt::print("{}\n", describe_inspected(args.paths).dump(2));
		return 0;
	}
	if (inspects_adapters(args.paths))
		print_adapters(compare_adapters(args.paths));
	else
		print_model(describe_model(args.paths.front()));
	return 0;
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
