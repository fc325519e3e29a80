#include "io/tokenizer_files.h"

#include "io/output_folder.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>

namespace weld {
namespace fs = std::filesystem;
namespace {

template <typename Json> Json parse_json_file(const fs::path& path) {
	const auto text = read_text_file(path);
	try {
		auto json = Json::parse(text);
		if (!json.is_object()) throw Error(fmt::format("{}: expected a JSON object", path.string()));
		return json;
	} catch (const nlohmann::json::exception& e) {
		throw Error(fmt::format("{}: cannot be parsed: {}", path.string(), e.what()));
	}
}

[[noreturn]] void bad_file(const fs::path& path, const std::string& what) {
	throw Error(fmt::format("{}: {}", path.string(), what));
}

int64_t token_id(const nlohmann::json& value, const fs::path& path, const std::string& where) {
	constexpr int64_t kMaxId = int64_t{1} << 31; // the tokenizers library's ids are 32-bit
	if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() >= kMaxId)
		bad_file(path, fmt::format("{}: expected a token id (an integer from 0 to 2^31 - 1)", where));
	return value.get<int64_t>();
}

// model.vocab: an object token -> id (BPE, WordPiece, WordLevel) or a list of [piece, score]
// whose positions are the ids (Unigram).
void read_model_vocab(TokenizerFiles& files, const fs::path& path) {
	const auto& model = files.tokenizer["model"];
	if (!model.is_object() || !model.contains("vocab")) bad_file(path, "no model.vocab");
	if (model.contains("type") && !model["type"].is_string()) bad_file(path, "model.type: expected a string");
	const auto type = model.value("type", std::string(model["vocab"].is_array() ? "Unigram" : "BPE"));
	const auto& vocab = model["vocab"];
	if (type == "Unigram") {
		if (!vocab.is_array()) bad_file(path, "model.vocab of a Unigram model must be a list of [piece, score]");
		for (size_t i = 0; i < vocab.size(); i++) {
			if (!vocab[i].is_array() || vocab[i].empty() || !vocab[i][0].is_string())
				bad_file(path, fmt::format("model.vocab[{}]: expected [piece, score]", i));
			files.vocab.emplace(vocab[i][0].get<std::string>(), static_cast<int64_t>(i));
		}
		return;
	}
	if (type != "BPE" && type != "WordPiece" && type != "WordLevel")
		bad_file(path, fmt::format("model type '{}' is not supported (BPE, WordPiece, WordLevel, Unigram)", type));
	if (!vocab.is_object()) bad_file(path, fmt::format("model.vocab of a {} model must be an object", type));
	for (const auto& [token, id] : vocab.items())
		files.vocab[token] = token_id(id, path, fmt::format("model.vocab['{}']", token));
}

void read_added_tokens(TokenizerFiles& files, const fs::path& path) {
	const auto& list =
	    files.tokenizer.contains("added_tokens") ? files.tokenizer["added_tokens"] : nlohmann::json::array();
	if (!list.is_array()) bad_file(path, "added_tokens must be a list");
	for (size_t i = 0; i < list.size(); i++) {
		const auto& entry = list[i];
		const auto where = fmt::format("added_tokens[{}]", i);
		if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string())
			bad_file(path, where + ": expected an object with a string 'content'");
		AddedToken token;
		token.id = token_id(entry.contains("id") ? entry["id"] : nlohmann::json(), path, where + ".id");
		token.content = entry["content"].get<std::string>();
		auto flag = [&](const char* key, bool fallback) {
			if (!entry.contains(key)) return fallback;
			if (!entry[key].is_boolean()) bad_file(path, fmt::format("{}.{}: expected true or false", where, key));
			return entry[key].get<bool>();
		};
		token.single_word = flag("single_word", false);
		token.lstrip = flag("lstrip", false);
		token.rstrip = flag("rstrip", false);
		token.normalized = flag("normalized", true);
		token.special = flag("special", false);
		files.vocab[token.content] = token.id;
		files.is_added[token.content] = true;
		files.added.push_back(std::move(token));
	}
}

std::optional<std::string> template_of_config(const nlohmann::ordered_json& config, const fs::path& path) {
	if (!config.contains("chat_template") || config["chat_template"].is_null()) return std::nullopt;
	const auto& value = config["chat_template"];
	if (value.is_string()) return value.get<std::string>();
	if (!value.is_array()) bad_file(path, "chat_template: expected a string or a list of {name, template}");
	for (const auto& entry : value)
		if (entry.is_object() && entry.contains("name") && entry["name"] == "default" && entry.contains("template") &&
		    entry["template"].is_string())
			return entry["template"].get<std::string>();
	return std::nullopt;
}

template <typename Json> Json added_token_json(const AddedToken& token) {
	Json json;
	json["id"] = token.id;
	json["content"] = token.content;
	json["single_word"] = token.single_word;
	json["lstrip"] = token.lstrip;
	json["rstrip"] = token.rstrip;
	json["normalized"] = token.normalized;
	json["special"] = token.special;
	return json;
}

// transformers' added_tokens_decoder: id (as a string) -> the token's flags, in id order.
nlohmann::ordered_json added_tokens_decoder(const std::vector<AddedToken>& added) {
	std::vector<const AddedToken*> sorted;
	for (const auto& token : added)
		sorted.push_back(&token);
	std::stable_sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->id < b->id; });
	nlohmann::ordered_json decoder = nlohmann::ordered_json::object();
	for (const auto* token : sorted) {
		auto json = added_token_json<nlohmann::ordered_json>(*token);
		json.erase("id");
		decoder[std::to_string(token->id)] = std::move(json);
	}
	return decoder;
}

} // namespace

int64_t TokenizerFiles::id_span() const {
	int64_t span = 0;
	for (const auto& [token, id] : vocab)
		span = std::max(span, id + 1);
	return span;
}

std::vector<std::string> TokenizerFiles::tokens_by_id() const {
	std::vector<std::string> tokens(static_cast<size_t>(id_span()));
	for (const auto& [token, id] : vocab)
		tokens[static_cast<size_t>(id)] = token;
	return tokens;
}

bool has_tokenizer_json(const fs::path& dir) {
	return fs::is_regular_file(dir / "tokenizer.json");
}

TokenizerFiles read_tokenizer_files(const fs::path& dir) {
	TokenizerFiles files;
	files.dir = dir;
	const auto path = dir / "tokenizer.json";
	if (!fs::is_regular_file(path)) bad_file(path, "missing (weld reads the vocabulary from tokenizer.json)");
	files.tokenizer = parse_json_file<nlohmann::json>(path);
	try {
		read_model_vocab(files, path);
		read_added_tokens(files, path);
	} catch (const nlohmann::json::exception& e) { // a value of an unexpected type
		bad_file(path, fmt::format("unexpected content: {}", e.what()));
	}
	files.config = read_tokenizer_config(dir);
	files.chat_template = read_chat_template(dir);
	if (fs::is_regular_file(dir / "special_tokens_map.json"))
		parse_json_file<nlohmann::json>(dir / "special_tokens_map.json");
	return files;
}

std::optional<nlohmann::ordered_json> read_tokenizer_config(const fs::path& dir) {
	const auto path = dir / "tokenizer_config.json";
	if (!fs::is_regular_file(path)) return std::nullopt;
	return parse_json_file<nlohmann::ordered_json>(path);
}

std::optional<std::string> read_chat_template(const fs::path& dir) {
	if (fs::is_regular_file(dir / "chat_template.jinja")) return read_text_file(dir / "chat_template.jinja");
	const auto config = read_tokenizer_config(dir);
	return config ? template_of_config(*config, dir / "tokenizer_config.json") : std::nullopt;
}

void strip_tokens_from(TokenizerFiles& files, int64_t max_id) {
	std::unordered_map<std::string, bool> removed;
	for (auto it = files.vocab.begin(); it != files.vocab.end();)
		if (it->second >= max_id) {
			removed[it->first] = true;
			files.is_added.erase(it->first);
			it = files.vocab.erase(it);
		} else {
			++it;
		}
	if (removed.empty()) return;
	std::erase_if(files.added, [&](const AddedToken& t) { return t.id >= max_id; });
	auto& model = files.tokenizer["model"];
	auto& vocab = model["vocab"];
	if (vocab.is_array()) {
		vocab.erase(vocab.begin() + std::min<int64_t>(max_id, static_cast<int64_t>(vocab.size())), vocab.end());
	} else {
		for (const auto& [token, unused] : removed)
			vocab.erase(token);
	}
	if (model.contains("merges") && model["merges"].is_array()) {
		auto& merges = model["merges"];
		auto uses_removed = [&](const nlohmann::json& merge) {
			std::vector<std::string> parts;
			if (merge.is_array()) {
				for (const auto& part : merge)
					if (part.is_string()) parts.push_back(part.get<std::string>());
				if (parts.size() == 2) parts.push_back(parts[0] + parts[1]);
			} else if (merge.is_string()) {
				const auto text = merge.get<std::string>();
				const auto space = text.find(' ');
				parts = {text.substr(0, space), space == std::string::npos ? "" : text.substr(space + 1)};
				parts.push_back(parts[0] + parts[1]);
			}
			return std::any_of(parts.begin(), parts.end(), [&](const auto& p) { return removed.contains(p); });
		};
		merges.erase(std::remove_if(merges.begin(), merges.end(), uses_removed), merges.end());
	}
}

void write_tokenizer_output(const TokenizerOutput& output, const fs::path& out_dir) {
	copy_tokenizer_files(output.donor_dir, out_dir);
	if (output.chat_template) {
		fs::remove(out_dir / "chat_template.jinja"); // transformers would prefer it to the config's
		fs::remove(out_dir / "chat_template.json");
	}
	std::optional<nlohmann::ordered_json> config;
	if (output.files) {
		auto tokenizer = output.files->tokenizer;
		auto added = output.files->added;
		added.insert(added.end(), output.appended.begin(), output.appended.end());
		auto list = nlohmann::json::array();
		for (const auto& token : added)
			list.push_back(added_token_json<nlohmann::json>(token));
		tokenizer["added_tokens"] = std::move(list);
		write_text_file(out_dir / "tokenizer.json", tokenizer.dump(2) + "\n");
		fs::remove(out_dir / "added_tokens.json"); // legacy; the config's added_tokens_decoder replaces it
		config = output.files->config.value_or(nlohmann::ordered_json::object());
		(*config)["added_tokens_decoder"] = added_tokens_decoder(added);
	} else if (output.chat_template) {
		config = read_tokenizer_config(out_dir);
	}
	if (output.chat_template) {
		if (!config) config = nlohmann::ordered_json::object();
		(*config)["chat_template"] = *output.chat_template;
	}
	if (config) write_text_file(out_dir / "tokenizer_config.json", config->dump(2) + "\n");
}

} // namespace weld
