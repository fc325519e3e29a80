// `weld eval`: parses the options, then hands over to weld-torch (cli/torch_program.h).
#include "cli/commands.h"
#include "cli/eval_options.h"
#include "cli/torch_program.h"

#include <memory>

namespace weld::cli {

std::function<int()> add_eval_command(CLI::App& app) {
	auto args = std::make_shared<EvalArgs>();
	auto* cmd = app.add_subcommand("eval", "Perplexity on text or token ids, or exact-match accuracy on "
	                                       "prompt/answer pairs or weld's procedural tasks, of a Llama-family "
	                                       "model (libtorch)");
	add_eval_options(*cmd, *args);
	return [args]() -> int { run_torch_program("eval", eval_words(*args)); };
}

} // namespace weld::cli
