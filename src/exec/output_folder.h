// Writing an output folder all or nothing: it is built under a temporary name beside the target
// and renamed into place only once complete. An existing output is refused unless `force`, and
// then replaced only after the new one is complete. On failure nothing is left behind.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

namespace weld {

// Calls fill(tmp) with an empty temporary folder, then publishes it as `out`. Throws
// weld::Error (out exists without force, parent missing, rename failed) or whatever fill throws.
void write_folder_atomically(const std::filesystem::path& out, bool force,
                             const std::function<void(const std::filesystem::path&)>& fill);

// Copies the tokenizer files (and generation_config.json) that exist in `from` into `to`.
void copy_tokenizer_files(const std::filesystem::path& from, const std::filesystem::path& to);

// Small text files of an output folder.
std::string read_text_file(const std::filesystem::path& path);
void write_text_file(const std::filesystem::path& path, const std::string& text);

} // namespace weld
