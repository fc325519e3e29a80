// Writing an output folder all or nothing: it is built under a temporary name beside the target
// and renamed into place only once complete. An existing output is refused unless `force`, and
// then replaced only after the new one is complete. On failure nothing is left behind.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace weld {

// An output folder being built: an empty temporary folder beside `out`, removed with all it
// holds when this object goes away unpublished.
class OutputFolder {
public:
	// Throws weld::Error when out exists without force, or its parent folder is missing.
	// resume_from: a temporary folder a killed run left for `out` (stale_temporary_folders) to
	// go on with instead of an empty one: it is renamed to this process's temporary name, with
	// what it holds.
	OutputFolder(const std::filesystem::path& out, bool force, const std::filesystem::path& resume_from = {});
	~OutputFolder();
	OutputFolder(const OutputFolder&) = delete;
	OutputFolder& operator=(const OutputFolder&) = delete;

	// Where to write (absolute).
	const std::filesystem::path& path() const { return tmp_; }
	// Renames the folder into place as `out` (replacing it with force). Throws weld::Error.
	void publish();

private:
	std::filesystem::path out_, tmp_;
	bool force_ = false, published_ = false;
};

// Removes what killed runs left in `folder`: temporary outputs ".NAME.weld-tmp-PID" and
// replaced outputs "NAME.weld-old-PID" whose PID no longer runs on this machine. Every new
// OutputFolder does this for its parent folder. Returns how many were removed.
size_t remove_stale_outputs(const std::filesystem::path& folder);

// The temporary folders ".NAME.weld-tmp-PID" of `out` (NAME its file name) whose PID no longer
// runs on this machine, most recently modified first.
std::vector<std::filesystem::path> stale_temporary_folders(const std::filesystem::path& out);

// Calls fill(tmp) with an empty temporary folder, then publishes it as `out`. Throws
// weld::Error (out exists without force, parent missing, rename failed) or whatever fill throws.
void write_folder_atomically(const std::filesystem::path& out, bool force,
                             const std::function<void(const std::filesystem::path&)>& fill);

// Copies the tokenizer files (with chat_template.jinja and generation_config.json) that exist in `from` into `to`.
void copy_tokenizer_files(const std::filesystem::path& from, const std::filesystem::path& to);

// Small text files of an output folder.
std::string read_text_file(const std::filesystem::path& path);
void write_text_file(const std::filesystem::path& path, const std::string& text);

} // namespace weld
