#include "io/output_folder.h"

#include "util/error.h"

#include <fmt/format.h>

#include <fstream>
#include <sstream>
#include <system_error>
#include <unistd.h>

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

} // namespace

OutputFolder::OutputFolder(const fs::path& out_dir, bool force) : force_(force) {
	out_ = fs::absolute(out_dir).lexically_normal();
	if (out_.filename().empty()) throw Error(fmt::format("{}: not a valid output folder name", out_dir.string()));
	if (fs::exists(out_) && !force)
		throw Error(fmt::format("{}: output already exists (use --force to replace it)", out_.string()));
	if (!fs::is_directory(out_.parent_path()))
		throw Error(fmt::format("{}: parent folder does not exist", out_.string()));
	tmp_ = out_.parent_path() / fmt::format(".{}.weld-tmp-{}", out_.filename().string(), getpid());
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
