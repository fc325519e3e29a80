#include "cli/torch_program.h"

#include "util/error.h"

#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace weld::cli {

namespace {

std::string torch_program_path(const std::string& subcommand) {
	std::error_code ec;
	const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
	const auto program = (ec ? std::filesystem::path("weld-torch") : self.parent_path() / "weld-torch").string();
	if (ec || !std::filesystem::exists(program))
		throw Error(fmt::format("weld {}: weld was built without libtorch (no weld-torch beside weld); install "
		                        "libtorch-dev and rebuild",
		                        subcommand));
	return program;
}

// argv for execv and posix_spawn: pointers into words, which must outlive them.
std::vector<char*> argv_of(std::vector<std::string>& words) {
	std::vector<char*> argv;
	for (auto& w : words)
		argv.push_back(w.data());
	argv.push_back(nullptr);
	return argv;
}

} // namespace

void run_torch_program(const std::string& subcommand, const std::vector<std::string>& args) {
	const auto program = torch_program_path(subcommand);
	std::vector<std::string> words = {program, subcommand};
	words.insert(words.end(), args.begin(), args.end());
	auto argv = argv_of(words);
	::execv(program.c_str(), argv.data());
	throw Error(fmt::format("{}: cannot run: {}", program, std::strerror(errno)));
}

void run_torch_program_and_wait(const std::string& subcommand, const std::vector<std::string>& args) {
	const auto program = torch_program_path(subcommand);
	std::vector<std::string> words = {program, subcommand};
	words.insert(words.end(), args.begin(), args.end());
	auto argv = argv_of(words);
	pid_t pid = 0;
	if (const int err = ::posix_spawn(&pid, program.c_str(), nullptr, nullptr, argv.data(), environ); err != 0)
		throw Error(fmt::format("{}: cannot run: {}", program, std::strerror(err)));
	int status = 0;
	while (::waitpid(pid, &status, 0) < 0)
		if (errno != EINTR) throw Error(fmt::format("{}: cannot wait for it: {}", program, std::strerror(errno)));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		throw Error(fmt::format("weld {} failed (its message is above)", subcommand));
}

} // namespace weld::cli
