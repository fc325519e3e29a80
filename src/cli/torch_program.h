// weld's libtorch commands (eval, train) run in weld-torch, a program built beside weld when
// libtorch is installed: weld parses or forwards their options and replaces itself with it, so
// that weld's other commands never load libtorch (0.4 s and 150 MB per start).
#pragma once

#include <string>
#include <vector>

namespace weld::cli {

// Replaces this process with `weld-torch <subcommand> <args...>`; throws weld::Error when weld
// was built without libtorch or the program cannot run.
[[noreturn]] void run_torch_program(const std::string& subcommand, const std::vector<std::string>& args);

// Runs `weld-torch <subcommand> <args...>` as a child process and waits for it (its output goes
// to this process's); throws weld::Error when it cannot start or exits non-zero.
void run_torch_program_and_wait(const std::string& subcommand, const std::vector<std::string>& args);

} // namespace weld::cli
