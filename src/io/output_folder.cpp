#include "io/output_folder.h"

#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <fstream>
#include <sstream>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace weld {
namespace fs = std::filesystem;
namespace {

void move_into_place(const fs::path& tmp, const fs::path& out, bool force) {
	std::error_code ec;
	if (fs::exists(out)) {
		if (!force) throw Error(fmt::format("{}: output already exists (use --force to replace it)", out.string()));
		const auto old = fs::path(out.string() + fmt::format(".weld-old-{}", getpid()));
		fs::rename(out, old, ec);
		if (ec) throw Error(fmt::format("{}: cannot move the old output aside: {}", out.string(), ec.message()));
		fs::rename(tmp, out, ec);
		if (ec) {
			fs::rename(old, out);
			throw Error(fmt::format("{}: cannot move the new output into place: {}", out.string(), ec.message()));
		}
		fs::remove_all(old);
		return;
	}
	fs::rename(tmp, out, ec);
	if (ec) throw Error(fmt::format("{}: cannot move the output into place: {}", out.string(), ec.message()));
}

// A process id that no process has: kill(pid, 0) fails with ESRCH. EPERM means one exists.
bool process_is_gone(long pid) {
	if (pid <= 0 || pid == static_cast<long>(getpid())) return false;
	return kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

// The pid at the end of ".NAME.weld-tmp-PID" or "NAME.weld-old-PID", or -1 when `file` is
// neither. Only these names are ever removed.
long leftover_pid(const std::string& file) {
	for (const std::string_view marker : {".weld-tmp-", ".weld-old-"}) {
		const auto at = file.rfind(marker);
		if (at == std::string::npos) continue;
		if (marker == ".weld-tmp-" && (file.empty() || file[0] != '.')) continue;
		const auto digits = file.substr(at + marker.size());
		if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos)
			continue;
		return std::stol(digits);
	}
	return -1;
}

} // namespace

size_t remove_stale_outputs(const fs::path& folder) {
	std::vector<fs::path> stale; // collected first: removing while iterating is unspecified
	std::error_code ec;
	for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec))
		if (process_is_gone(leftover_pid(it->path().filename().string()))) stale.push_back(it->path());
	size_t removed = 0;
	for (const auto& path : stale) {
		std::error_code ignored;
		if (fs::remove_all(path, ignored) > 0 && !ignored) ++removed;
	}
	return removed;
}

std::vector<fs::path> stale_temporary_folders(const fs::path& out_dir) {
	const auto out = fs::absolute(out_dir).lexically_normal();
	const std::string prefix = fmt::format(".{}.weld-tmp-", out.filename().string());
	std::vector<std::pair<fs::file_time_type, fs::path>> found;
	std::error_code ec;
	for (fs::directory_iterator it(out.parent_path(), ec), end; !ec && it != end; it.increment(ec)) {
		const auto name = it->path().filename().string();
		if (!name.starts_with(prefix)) continue;
		const auto digits = name.substr(prefix.size()); // exactly the PID: NAME may hold the marker too
		if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
		if (!process_is_gone(leftover_pid(name))) continue;
		std::error_code ignored;
		if (!fs::is_directory(it->path(), ignored)) continue;
		found.emplace_back(fs::last_write_time(it->path(), ignored), it->path());
	}
	std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
	std::vector<fs::path> folders;
	for (auto& [time, path] : found)
		folders.push_back(std::move(path));
	return folders;
}

OutputFolder::OutputFolder(const fs::path& out_dir, bool force, const fs::path& resume_from) : force_(force) {
	out_ = fs::absolute(out_dir).lexically_normal();
	if (out_.filename().empty()) throw Error(fmt::format("{}: not a valid output folder name", out_dir.string()));
	if (fs::exists(out_) && !force)
		throw Error(fmt::format("{}: output already exists (use --force to replace it)", out_.string()));
	if (!fs::is_directory(out_.parent_path()))
		throw Error(fmt::format("{}: parent folder does not exist", out_.string()));
	tmp_ = out_.parent_path() / fmt::format(".{}.weld-tmp-{}", out_.filename().string(), getpid());
	if (!resume_from.empty()) {
		// Taken over before the sweep below, which would remove it as a dead process's.
		fs::remove_all(tmp_);
		std::error_code ec;
		fs::rename(resume_from, tmp_, ec);
		if (ec)
			throw Error(fmt::format("{}: cannot take over the interrupted merge's folder: {}", resume_from.string(),
			                        ec.message()));
		remove_stale_outputs(out_.parent_path());
		return;
	}
	remove_stale_outputs(out_.parent_path());
	fs::remove_all(tmp_);
	fs::create_directory(tmp_);
}

OutputFolder::~OutputFolder() {
	if (published_) return;
	std::error_code ignored;
	fs::remove_all(tmp_, ignored);
}

void OutputFolder::publish() {
	move_into_place(tmp_, out_, force_);
	published_ = true;
}

void write_folder_atomically(const fs::path& out_dir, bool force, const std::function<void(const fs::path&)>& fill) {
	OutputFolder folder(out_dir, force);
	fill(folder.path());
	folder.publish();
}

void copy_tokenizer_files(const fs::path& from, const fs::path& to) {
	// The files a tokenizer may consist of, across the common tokenizer classes.
	static constexpr const char* kFiles[] = {
	    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",    "vocab.json",
	    "merges.txt",     "added_tokens.json",     "generation_config.json",  "chat_template.jinja"};
	for (const char* name : kFiles)
		if (fs::is_regular_file(from / name)) fs::copy_file(from / name, to / name);
}

std::string read_text_file(const fs::path& path) {
	std::ifstream in(path, std::ios::binary);
	if (!in) throw Error(fmt::format("{}: cannot read file", path.string()));
	std::ostringstream text;
	text << in.rdbuf();
	return text.str();
}

void write_text_file(const fs::path& path, const std::string& text) {
	std::ofstream out(path, std::ios::binary);
	out << text;
	out.close();
	if (!out) throw Error(fmt::format("{}: cannot write file", path.string()));
}

} // namespace weld
