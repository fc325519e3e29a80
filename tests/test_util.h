// Helpers shared by the end-to-end tests: temporary folders, tiny model families, reading
// merged tensors back as float32.
#pragma once

#include "io/model.h"
#include "tensor/convert.h"
#include "testing/tiny_llama.h"
#include "util/error.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

namespace weld::test {

// The message of the weld::Error that fn throws, or "<no error>".
inline std::string error_of(const std::function<void()>& fn) {
	try {
		fn();
	} catch (const Error& e) {
		return e.what();
	}
	return "<no error>";
}

class TempDir {
public:
	TempDir() {
		static std::atomic<int> counter{0};
		path_ = std::filesystem::temp_directory_path() /
		        ("weld-test-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
		std::filesystem::remove_all(path_);
		std::filesystem::create_directories(path_);
	}
	~TempDir() {
		std::error_code ignored;
		std::filesystem::remove_all(path_, ignored);
	}
	TempDir(const TempDir&) = delete;
	TempDir& operator=(const TempDir&) = delete;

	const std::filesystem::path& path() const { return path_; }
	std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
	std::filesystem::path path_;
};

// Makes dir the working directory until it goes out of scope.
class WorkingDir {
public:
	explicit WorkingDir(const std::filesystem::path& dir) : previous_(std::filesystem::current_path()) {
		std::filesystem::current_path(dir);
	}
	~WorkingDir() { std::filesystem::current_path(previous_); }
	WorkingDir(const WorkingDir&) = delete;
	WorkingDir& operator=(const WorkingDir&) = delete;

private:
	std::filesystem::path previous_;
};

inline void write_file(const std::filesystem::path& path, const std::string& text) {
	std::ofstream(path, std::ios::binary) << text;
}

inline std::string read_file(const std::filesystem::path& path) {
	std::ifstream in(path, std::ios::binary);
	std::ostringstream s;
	s << in.rdbuf();
	return s.str();
}

using Tensors = std::map<std::string, std::vector<float>>;

inline Tensors as_map(const std::vector<NamedTensor>& tensors) {
	Tensors out;
	for (const auto& t : tensors)
		out[t.name] = t.values;
	return out;
}

// Values as stored: rounds through the dtype the model was written in.
inline Tensors stored_values(const std::vector<NamedTensor>& tensors, DType dtype) {
	Tensors out;
	for (const auto& t : tensors) {
		std::vector<uint8_t> bytes(t.values.size() * dtype_size(dtype));
		convert_from_f32(dtype, t.values.data(), bytes.data(), t.values.size());
		auto& values = out[t.name];
		values.resize(t.values.size());
		convert_to_f32(dtype, bytes.data(), values.data(), values.size());
	}
	return out;
}

inline Tensors read_model(const std::filesystem::path& dir) {
	ModelFolder model(dir);
	Tensors out;
	for (const auto& t : model.tensors()) {
		auto& values = out[t.info->name];
		values.resize(t.info->numel());
		convert_to_f32(t.info->dtype, t.file->data(*t.info).data(), values.data(), values.size());
	}
	return out;
}

// Runs the weld binary; returns the exit status and fills stderr_text.
// The standard output of a shell command. Throws std::runtime_error, with `what` and the output,
// when it cannot run or exits non-zero.
inline std::string command_output(const std::string& command, const std::string& what = "") {
	FILE* pipe = popen(command.c_str(), "r");
	if (!pipe) throw std::runtime_error("cannot run " + command);
	std::string out;
	char buffer[65536];
	for (size_t n; (n = fread(buffer, 1, sizeof buffer, pipe)) > 0;)
		out.append(buffer, n);
	if (pclose(pipe) != 0) throw std::runtime_error((what.empty() ? "failed: " + command : what) + "\n" + out);
	return out;
}

inline int run_weld(const std::string& args, std::string* stderr_text = nullptr, std::string* stdout_text = nullptr) {
	TempDir capture;
	const auto out = capture / "out.txt", err = capture / "err.txt";
	const std::string command = std::string(WELD_BINARY) + " " + args + " >" + out.string() + " 2>" + err.string();
	const int status = std::system(command.c_str());
	if (stderr_text) *stderr_text = read_file(err);
	if (stdout_text) *stdout_text = read_file(out);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

} // namespace weld::test
