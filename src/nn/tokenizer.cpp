#include "nn/tokenizer.h"

#include "io/safetensors.h"
#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <functional>
#include <optional>

namespace weld::nn {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string show(const fs::path& path) {
	return escape_for_message(path.string(), 400);
}

std::ifstream open_file(const fs::path& file) {
	std::ifstream in(file, std::ios::binary);
	if (!in) throw Error(fmt::format("{}: cannot read", show(file)));
	return in;
}

// Calls each(line_number, line) for every non-blank line.
void for_each_line(const fs::path& file, const std::function<void(size_t, const std::string&)>& each) {
	auto in = open_file(file);
	std::string line;
	for (size_t number = 1; std::getline(in, line); ++number) {
		if (!line.empty() && line.back() == '\r') line.pop_back();
		if (line.find_first_not_of(" \t") == std::string::npos) continue;
		each(number, line);
	}
	if (in.bad()) throw Error(fmt::format("{}: cannot read", show(file)));
}

json parse_record(const fs::path& file, size_t number, const std::string& line) {
	json j;
	try {
		j = json::parse(line);
	} catch (const json::exception& e) {
		throw Error(fmt::format("{}:{}: invalid JSON: {}", show(file), number, escape_for_message(e.what(), 200)));
	}
	if (!j.is_object()) throw Error(fmt::format("{}:{}: expected a JSON object", show(file), number));
	return j;
}

} // namespace

ByteTokenizer::ByteTokenizer(int64_t vocab_size, const std::string& model) : specials_(vocab_size >= 258) {
	if (vocab_size < 256)
		throw Error(fmt::format("{}: a vocabulary of {} cannot hold byte tokens (256 needed); give token ids as "
		                        "JSON lines {{\"input_ids\": [...]}}",
		                        escape_for_message(model, 400), vocab_size));
}

std::vector<int64_t> ByteTokenizer::encode(std::string_view text) const {
	std::vector<int64_t> ids;
	ids.reserve(text.size() + 1);
	if (specials_) ids.push_back(kBos);
	for (char c : text)
		ids.push_back(static_cast<unsigned char>(c));
	return ids;
}

std::string ByteTokenizer::decode(const std::vector<int64_t>& ids) const {
	std::string text;
	for (int64_t id : ids)
		if (id >= 0 && id < 256) text.push_back(static_cast<char>(id));
	return text;
}

std::string own_tokenizer_file(const fs::path& model_dir) {
	for (const char* name : {"tokenizer.json", "tokenizer.model", "vocab.json"})
		if (fs::exists(model_dir / name)) return name;
	std::error_code ec;
	for (const auto& entry : fs::directory_iterator(model_dir, ec))
		if (entry.path().extension() == ".tiktoken") return entry.path().filename().string();
	return "";
}

DataKind detect_data_kind(const fs::path& file) {
	if (file.extension() != ".jsonl") return DataKind::Text;
	std::optional<DataKind> kind;
	auto in = open_file(file);
	std::string line;
	for (size_t number = 1; !kind && std::getline(in, line); ++number) {
		if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
		const auto j = parse_record(file, number, line);
		if (j.contains("input_ids"))
			kind = DataKind::TokenIds;
		else if (j.contains("prompt") && j.contains("answer"))
			kind = DataKind::PromptAnswer;
		else
			throw Error(fmt::format("{}:{}: expected {{\"input_ids\": [...]}} or {{\"prompt\": ..., \"answer\": ...}}",
			                        show(file), number));
	}
	if (!kind) throw Error(fmt::format("{}: no records", show(file)));
	return *kind;
}

std::vector<std::vector<int64_t>> read_token_id_lines(const fs::path& file, int64_t vocab_size) {
	std::vector<std::vector<int64_t>> out;
	for_each_line(file, [&](size_t number, const std::string& line) {
		const auto j = parse_record(file, number, line);
		auto it = j.find("input_ids");
		if (it == j.end() || !it->is_array())
			throw Error(fmt::format("{}:{}: 'input_ids' must be a list of token ids", show(file), number));
		auto& ids = out.emplace_back();
		for (const auto& id : *it) {
			if (!id.is_number_integer() || id.get<int64_t>() < 0)
				throw Error(fmt::format("{}:{}: token id {} is not a non-negative integer", show(file), number,
				                        escape_for_message(id.dump(), 40)));
			if (id.get<int64_t>() >= vocab_size)
				throw Error(fmt::format("{}:{}: token id {} is outside the model's vocabulary [0, {})", show(file),
				                        number, id.get<int64_t>(), vocab_size));
			ids.push_back(id.get<int64_t>());
		}
	});
	return out;
}

std::vector<PromptAnswer> read_prompt_answer_lines(const fs::path& file) {
	std::vector<PromptAnswer> out;
	for_each_line(file, [&](size_t number, const std::string& line) {
		const auto j = parse_record(file, number, line);
		for (const char* key : {"prompt", "answer"})
			if (!j.contains(key) || !j[key].is_string())
				throw Error(fmt::format("{}:{}: '{}' must be a string", show(file), number, key));
		out.push_back({j["prompt"].get<std::string>(), j["answer"].get<std::string>()});
	});
	return out;
}

std::vector<std::string> read_text_lines(const fs::path& file) {
	std::vector<std::string> out;
	auto in = open_file(file);
	std::string line;
	while (std::getline(in, line)) {
		if (!line.empty() && line.back() == '\r') line.pop_back();
		if (!line.empty()) out.push_back(line);
	}
	if (in.bad()) throw Error(fmt::format("{}: cannot read", show(file)));
	return out;
}

} // namespace weld::nn
