#include "nn/tokenizer.h"

#include "io/safetensors.h"
#include "io/tokenizer_files.h"
#include "text/jinja.h"
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

ModelTokenizer::ModelTokenizer(const fs::path& model_dir, int64_t vocab_size) : model_(model_dir.string()) {
	const auto own = model_dir.empty() ? std::string() : own_tokenizer_file(model_dir);
	if (own.empty()) {
		bytes_.emplace(vocab_size, model_);
	} else if (own != "tokenizer.json") {
		throw Error(fmt::format("{}: the model's tokenizer is {}, which weld cannot run (it runs tokenizer.json); give "
		                        "token ids as JSON lines {{\"input_ids\": [...]}}",
		                        show(model_dir), own));
	} else {
		own_ = std::make_shared<const text::Tokenizer>(text::Tokenizer::load(model_dir));
		if (own_->id_span() > vocab_size)
			throw Error(fmt::format("{}: tokenizer.json has token ids up to {}, beyond the model's vocab_size {}",
			                        show(model_dir), own_->id_span() - 1, vocab_size));
	}
	// Parsed only for --chat, so that a template weld cannot run stops nothing else.
	chat_template_ = own_ ? own_->chat_template() : (model_dir.empty() ? std::nullopt : read_chat_template(model_dir));
}

std::vector<int64_t> ModelTokenizer::encode(std::string_view text) const {
	return own_ ? own_->encode(text) : bytes_->encode(text);
}

std::vector<int64_t> ModelTokenizer::encode_plain(std::string_view text) const {
	if (own_) return own_->encode(text, false);
	std::vector<int64_t> ids;
	for (const char c : text)
		ids.push_back(static_cast<unsigned char>(c));
	return ids;
}

std::string ModelTokenizer::decode(const std::vector<int64_t>& ids) const {
	return own_ ? own_->decode(ids, true) : bytes_->decode(ids);
}

bool ModelTokenizer::is_eos(int64_t id) const {
	if (own_) return own_->eos_id() == id;
	return bytes_->has_specials() && id == ByteTokenizer::kEos;
}

std::vector<std::vector<int64_t>> ModelTokenizer::encode_line(std::string_view line, int64_t max_positions) const {
	std::vector<std::vector<int64_t>> out;
	if (own_) {
		const auto ids = own_->encode(line);
		const size_t room = max_positions > 0 ? static_cast<size_t>(max_positions) : SIZE_MAX;
		for (size_t begin = 0; begin < ids.size(); begin += room)
			out.emplace_back(ids.begin() + static_cast<std::ptrdiff_t>(begin),
			                 ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), begin + room)));
		return out;
	}
	const size_t room =
	    max_positions > 0 ? static_cast<size_t>(max_positions) - (bytes_->has_specials() ? 1 : 0) : SIZE_MAX;
	if (room == 0) throw Error("max_position_embeddings leaves no room for text");
	for (size_t begin = 0; begin < line.size(); begin += room)
		out.push_back(bytes_->encode(line.substr(begin, room)));
	return out;
}

std::vector<int64_t> ModelTokenizer::encode_prompt(const std::string& prompt, bool chat) const {
	if (!chat) return encode(prompt);
	if (!chat_template_)
		throw Error(fmt::format("{}: --chat needs the model's chat template (chat_template.jinja or "
		                        "tokenizer_config.json's chat_template), and there is none",
		                        escape_for_message(model_, 400)));
	const auto messages = nlohmann::ordered_json::array({{{"role", "user"}, {"content", prompt}}});
	const text::JinjaTemplate parsed(*chat_template_, escape_for_message(model_, 400));
	const auto text =
	    text::render_chat(parsed, messages, own_ ? own_->bos_token() : "", own_ ? own_->eos_token() : "", true);
	return own_ ? own_->encode(text, false) : encode(text);
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
