// weld convert: a Hugging Face model folder to a GGUF file for llama.cpp, or back.
#include "cli/commands.h"
#include "io/gguf_model.h"
#include "util/error.h"

#include <fmt/format.h>

#include <memory>

namespace weld::cli {
namespace {

struct ConvertArgs {
	std::string model, out, gguf_type;
	bool force = false, quiet = false;
};

int run(const ConvertArgs& args) {
	if (is_gguf_reference(args.model)) {
		if (!args.gguf_type.empty()) throw Error("--gguf-type: only when writing a GGUF file");
		convert_gguf_to_folder(args.model, args.out, args.force);
	} else if (args.out.ends_with(".gguf")) {
		std::optional<GgmlType> type;
		if (!args.gguf_type.empty()) type = parse_gguf_type(args.gguf_type, "--gguf-type");
		convert_folder_to_gguf(args.model, args.out, type, args.force);
	} else {
		throw Error(fmt::format("{}: weld convert turns a model folder into OUT.gguf, or a .gguf file into a folder",
		                        args.model));
	}
	if (!args.quiet) fmt::print("weld: converted {} into {}\n", args.model, args.out);
	return 0;
}

} // namespace

std::function<int()> add_convert_command(CLI::App& app) {
	auto args = std::make_shared<ConvertArgs>();
	auto* cmd =
	    app.add_subcommand("convert", "Convert a Llama-family model folder to GGUF (llama.cpp), or GGUF to a folder");
	cmd->add_option("model", args->model, "model folder, or a .gguf file")->required();
	cmd->add_option("out", args->out, "OUT.gguf for a folder; an output folder for a .gguf file")->required();
	cmd->add_option("--gguf-type", args->gguf_type,
	                "type of the GGUF weights: f32, f16, bf16 or q8_0 (default: the model's own)");
	cmd->add_flag("--force", args->force, "replace the output if it exists");
	cmd->add_flag("--quiet,-q", args->quiet, "print nothing but errors");
	return [args] { return run(*args); };
}

} // namespace weld::cli
