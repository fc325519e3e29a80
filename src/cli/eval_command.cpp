// `weld eval`: parses the options, then replaces this process with weld-eval (built beside weld
// when libtorch is installed), which runs the model.
#include "cli/commands.h"
#include "cli/eval_options.h"
#include "util/error.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

namespace weld::cli {
namespace {

int run(const EvalArgs& args) {
	std::error_code ec;
	const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
	const auto program = (ec ? std::filesystem::path("weld-eval") : self.parent_path() / "weld-eval").string();
	if (ec || !std::filesystem::exists(program))
		throw Error("weld was built without libtorch (no weld-eval beside weld); install libtorch-dev and rebuild");
	std::vector<std::string> words = {program,   args.model, "--data",    args.data,
	                                  "--dtype", args.dtype, "--threads", std::to_string(args.threads)};
	if (args.json) words.push_back("--json");
	std::vector<char*> argv;
	for (auto& w : words)
		argv.push_back(w.data());
	argv.push_back(nullptr);
	::execv(program.c_str(), argv.data());
	throw Error(fmt::format("{}: cannot run: {}", program, std::strerror(errno)));
}

} // namespace

std::function<int()> add_eval_command(CLI::App& app) {
	auto args = std::make_shared<EvalArgs>();
	auto* cmd = app.add_subcommand("eval", "Perplexity on text or token ids, or exact-match accuracy on "
	                                       "prompt/answer pairs, of a Llama-family model (libtorch)");
	add_eval_options(*cmd, *args);
	return [args] { return run(*args); };
}

} // namespace weld::cli
