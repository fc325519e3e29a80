#include "cli/commands.h"
#include "exec/merge.h"
#include "testing/tiny_llama.h"
#include "util/size.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

namespace weld::cli {
namespace {

namespace fs = std::filesystem;

constexpr const char* kExampleRecipe = R"(# weld's built-in example: TIES-merge two fine-tunes of a tiny Llama model.
merge_method: ties
base_model: base
models:
  - model: finetune-a
    parameters:
      weight: 1.0
      density: 0.5
  - model: finetune-b
    parameters:
      weight: [0.5, 1.0]   # a gradient over the layers
      density: 0.5
parameters:
  normalize: true
dtype: bfloat16
)";

int run_example(const fs::path& dir) {
	fs::create_directories(dir);
	TinyLlamaSpec spec;
	spec.layers = 4;
	spec.hidden = 64;
	spec.intermediate = 128;
	spec.vocab = 256;
	spec.heads = 4;
	spec.kv_heads = 2;
	spec.dtype = DType::BF16;
	const auto base = make_tiny_llama(spec, 1);
	fmt::print("weld example: writing a tiny Llama base model and two fine-tunes under {}\n", dir.string());
	for (const auto& [name, seed] : {std::pair{"base", 0}, {"finetune-a", 2}, {"finetune-b", 3}}) {
		const auto path = dir / name;
		fs::remove_all(path);
		write_tiny_llama(path, spec, seed == 0 ? base : perturb(base, 0.01f, static_cast<uint64_t>(seed)));
		fmt::print("  {}\n", path.string());
	}
	const auto recipe_path = dir / "ties.yml";
	std::ofstream(recipe_path) << kExampleRecipe;
	fmt::print("recipe {}:\n{}\n", recipe_path.string(), kExampleRecipe);

	// The recipe names models relative to the example folder, as a user would from there.
	const auto previous = fs::current_path();
	fs::current_path(dir);
	MergeOptions options;
	options.recipe_path = "ties.yml";
	options.out_dir = "merged";
	options.force = true;
	options.exec.threads = std::max(1u, std::thread::hardware_concurrency());
	const auto summary = run_merge(options);
	fs::current_path(previous);

	fmt::print("merged {} tensors ({}) with TIES in {:.2f}s\n", summary.tensors, format_size(summary.bytes_written),
	           summary.seconds);
	fmt::print("output: {}\n", (dir / "merged").string());
	fmt::print("look inside with: weld inspect {}\n", (dir / "merged").string());
	return 0;
}

} // namespace

std::function<int()> add_example_command(CLI::App& app) {
	auto dir = std::make_shared<std::string>("weld-example");
	auto* cmd = app.add_subcommand("example", "Generate a tiny base model and two fine-tunes, merge them with TIES "
	                                          "and show the result");
	cmd->add_option("dir", *dir, "where to put the example (default: ./weld-example)");
	return [dir] { return run_example(fs::absolute(*dir)); };
}

} // namespace weld::cli
