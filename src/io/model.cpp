#include "io/model.h"
#include "io/json.h"

#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

namespace weld {
namespace fs = std::filesystem;

namespace {

using nlohmann::json;

constexpr uint64_t kMaxJsonFileBytes = 100ull << 20; // index and config files are small

std::string read_json_file(const fs::path& path) {
	std::error_code ec;
	const auto size = fs::file_size(path, ec);
	if (ec) throw Error(fmt::format("{}: cannot read: {}", show(path), ec.message()));
	if (size > kMaxJsonFileBytes)
		throw Error(
		    fmt::format("{}: {} bytes is too large for a JSON file (limit {})", show(path), size, kMaxJsonFileBytes));
	std::ifstream in(path, std::ios::binary);
	std::ostringstream text;
	text << in.rdbuf();
	if (!in) throw Error(fmt::format("{}: cannot read", show(path)));
	return text.str();
}

// Integer fields of config.json: absent or null -> nullopt; anything but a non-negative integer -> Error.
std::optional<int64_t> config_int(const json& j, const char* key, const std::string& label) {
	auto it = j.find(key);
	if (it == j.end() || it->is_null()) return std::nullopt;
	if (it->is_number_unsigned() && it->get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX)) return it->get<int64_t>();
	throw Error(fmt::format("{}: '{}' must be a non-negative integer, got {}", show(label), key,
	                        escape_for_message(it->dump(), 40)));
}

} // namespace

ModelConfig parse_model_config(std::string_view json_text, const std::string& label) {
	const json j = parse_json_object(json_text, label);
	ModelConfig config;
	config.text = std::string(json_text);
	if (auto it = j.find("architectures"); it != j.end() && !it->is_null()) {
		if (!it->is_array()) throw Error(fmt::format("{}: 'architectures' must be a list of strings", show(label)));
		for (const auto& a : *it)
			if (!a.is_string()) throw Error(fmt::format("{}: 'architectures' must be a list of strings", show(label)));
		if (!it->empty()) config.architecture = (*it)[0].get<std::string>();
	}
	config.num_hidden_layers = config_int(j, "num_hidden_layers", label);
	config.vocab_size = config_int(j, "vocab_size", label);
	if (auto it = j.find("tie_word_embeddings"); it != j.end() && !it->is_null()) {
		if (!it->is_boolean()) throw Error(fmt::format("{}: 'tie_word_embeddings' must be true or false", show(label)));
		config.tie_word_embeddings = it->get<bool>();
	}
	return config;
}

// --- ModelFolder ---

namespace {

using TensorList = std::vector<ModelFolder::Tensor>;
using NameIndex = std::unordered_map<std::string_view, size_t>;

// All tensors of all files; a name in two shards is an error (which copy would be meant?).
void collect_tensors(const fs::path& dir, const std::vector<std::unique_ptr<SafetensorsFile>>& files,
                     TensorList& tensors, NameIndex& by_name) {
	for (const auto& file : files)
		for (const auto& info : file->tensors()) {
			auto [it, fresh] = by_name.emplace(info.name, tensors.size());
			if (!fresh)
				throw Error(
				    fmt::format("{}: tensor {} is in both {} and {}", show(dir), quote_for_message(info.name),
				                quote_for_message(tensors[it->second].file->path().lexically_relative(dir).string()),
				                quote_for_message(file->path().lexically_relative(dir).string())));
			tensors.push_back({file.get(), &info});
		}
}

// The index and the shards must agree exactly, in both directions.
void check_index(const ShardIndex& index, const fs::path& index_path,
                 const std::vector<std::unique_ptr<SafetensorsFile>>& files, const TensorList& tensors) {
	std::unordered_map<std::string_view, const SafetensorsFile*> file_of_shard;
	for (size_t k = 0; k < index.shard_files.size(); ++k)
		file_of_shard[index.shard_files[k]] = files[k].get();
	std::unordered_set<std::string_view> listed;
	for (const auto& [name, shard] : index.weight_map) {
		if (!file_of_shard.at(shard)->find(name))
			throw Error(fmt::format("{}: tensor {} is listed in shard {}, but that shard has no such tensor",
			                        show(index_path), quote_for_message(name), quote_for_message(shard)));
		listed.insert(name);
	}
	for (const auto& t : tensors)
		if (!listed.count(t.info->name))
			throw Error(fmt::format("{}: tensor {} is not listed in {}", show(t.file->path()),
			                        quote_for_message(t.info->name), show(index_path.filename())));
}

} // namespace

ModelFolder::ModelFolder(const fs::path& dir) : dir_(dir) {
	std::error_code ec;
	if (!fs::is_directory(dir, ec)) throw Error(fmt::format("{}: no such model folder", show(dir)));
	const auto index_path = dir / "model.safetensors.index.json";
	const auto single_path = dir / "model.safetensors";
	if (fs::exists(index_path, ec)) {
		has_index_ = true;
		const ShardIndex index = parse_shard_index(read_json_file(index_path), index_path.string());
		for (const auto& shard : index.shard_files) {
			const auto path = dir / shard;
			if (!fs::exists(path, ec))
				throw Error(fmt::format("{}: shard {} listed in the index does not exist", show(index_path),
				                        quote_for_message(shard)));
			files_.push_back(std::make_unique<SafetensorsFile>(path));
		}
		collect_tensors(dir_, files_, tensors_, by_name_);
		check_index(index, index_path, files_, tensors_);
	} else if (fs::exists(single_path, ec)) {
		files_.push_back(std::make_unique<SafetensorsFile>(single_path));
		collect_tensors(dir_, files_, tensors_, by_name_);
	} else {
		throw Error(fmt::format("{}: no model.safetensors or model.safetensors.index.json", show(dir)));
	}
	if (const auto config_path = dir / "config.json"; fs::exists(config_path, ec))
		config_ = parse_model_config(read_json_file(config_path), config_path.string());
}

const ModelFolder::Tensor* ModelFolder::find(std::string_view name) const {
	auto it = by_name_.find(name);
	return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

// --- Hugging Face cache ---

namespace {

struct RepoReference {
	std::string repo;     // "org/name" or "name"
	std::string revision; // "main" unless given
};

bool is_repo_part(std::string_view part) {
	if (part.empty() || part == "." || part == ".." || part.find("--") != std::string_view::npos) return false;
	for (char c : part)
		if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
	return true;
}

// Git revisions: branch or tag names (possibly "refs/pr/1") or commit hashes; never escaping the cache.
bool is_revision(std::string_view rev) {
	if (rev.empty() || rev.front() == '/' || rev.back() == '/') return false;
	for (const auto& part : fs::path(rev))
		if (part == ".." || part == ".") return false;
	for (char c : rev)
		if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.' && c != '/') return false;
	return true;
}

std::optional<RepoReference> parse_repo_reference(const std::string& reference) {
	RepoReference ref{reference, "main"};
	if (auto at = reference.find('@'); at != std::string::npos) {
		ref.repo = reference.substr(0, at);
		ref.revision = reference.substr(at + 1);
		if (!is_revision(ref.revision)) return std::nullopt;
	}
	const auto slash = ref.repo.find('/');
	if (slash == std::string::npos) return is_repo_part(ref.repo) ? std::optional(ref) : std::nullopt;
	if (!is_repo_part(ref.repo.substr(0, slash)) || !is_repo_part(ref.repo.substr(slash + 1))) return std::nullopt;
	return ref;
}

fs::path hf_cache_dir() {
	const auto env = [](const char* name) -> std::string {
		const char* v = std::getenv(name);
		return v ? v : "";
	};
	if (auto hub = env("HF_HUB_CACHE"); !hub.empty()) return hub;
	if (auto home = env("HF_HOME"); !home.empty()) return fs::path(home) / "hub";
	return fs::path(env("HOME")) / ".cache" / "huggingface" / "hub";
}

std::string read_ref(const fs::path& path) {
	std::ifstream in(path);
	std::string commit;
	std::getline(in, commit);
	while (!commit.empty() && std::isspace(static_cast<unsigned char>(commit.back())))
		commit.pop_back();
	return commit;
}

std::optional<fs::path> find_snapshot(const fs::path& repo_dir, const std::string& revision) {
	std::error_code ec;
	if (const auto ref = repo_dir / "refs" / revision; fs::is_regular_file(ref, ec)) {
		const std::string commit = read_ref(ref);
		if (is_revision(commit) && commit.find('/') == std::string::npos &&
		    fs::is_directory(repo_dir / "snapshots" / commit, ec))
			return repo_dir / "snapshots" / commit;
	}
	if (fs::is_directory(repo_dir / "snapshots" / revision, ec)) return repo_dir / "snapshots" / revision;
	return std::nullopt;
}

} // namespace

fs::path resolve_model_reference(const std::string& reference) {
	std::error_code ec;
	if (reference.empty()) throw Error("empty model reference");
	if (fs::is_directory(reference, ec)) return reference;
	const auto ref = parse_repo_reference(reference);
	if (!ref) throw Error(fmt::format("{}: no such model folder", show(reference)));

	const fs::path cache = hf_cache_dir();
	std::string folder = "models--" + ref->repo;
	if (auto slash = folder.find('/'); slash != std::string::npos) folder.replace(slash, 1, "--");
	const fs::path repo_dir = cache / folder;
	if (auto snapshot = find_snapshot(repo_dir, ref->revision)) return *snapshot;

	const std::string fetch = reference.find('@') == std::string::npos
	                              ? fmt::format("huggingface-cli download {}", ref->repo)
	                              : fmt::format("huggingface-cli download {} --revision {}", ref->repo, ref->revision);
	if (fs::is_directory(repo_dir, ec))
		throw Error(fmt::format("model '{}' is in the Hugging Face cache ({}) but revision '{}' is not; weld never "
		                        "downloads: fetch it with `{}`",
		                        ref->repo, show(cache), ref->revision, fetch));
	throw Error(fmt::format("model '{}' is not a local folder and is not in the Hugging Face cache ({}); weld never "
	                        "downloads: fetch it with `{}` or give a local path",
	                        ref->repo, show(cache), fetch));
}

} // namespace weld
