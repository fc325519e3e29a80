#include "cli/torch_program.h"

#include "util/error.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace weld::cli {

void run_torch_program(const std::string& subcommand, const std::vector<std::string>& args) {
	std::error_code ec;
	const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
	const auto program = (ec ? std::filesystem::path("weld-torch") : self.parent_path() / "weld-torch").string();
	if (ec || !std::filesystem::exists(program))
		throw Error(fmt::format("weld {}: weld was built without libtorch (no weld-torch beside weld); install "
		                        "libtorch-dev and rebuild",
		                        subcommand));
	std::vector<std::string> words = {program, subcommand};
	words.insert(words.end(), args.begin(), args.end());
	std::vector<char*> argv;
	for (auto& w : words)
		argv.push_back(w.data());
	argv.push_back(nullptr);
	::execv(program.c_str(), argv.data());
	throw Error(fmt::format("{}: cannot run: {}", program, std::strerror(errno)));
}

} // namespace weld::cli
