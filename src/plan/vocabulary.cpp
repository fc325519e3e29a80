#include "plan/vocabulary.h"

#include "io/chat_templates.h"
#include "io/model.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <optional>
#include <unordered_set>

namespace weld {
namespace fs = std::filesystem;
namespace {

// The model a token's source names: the same reference, else the same folder. -1: none.
int find_model(const std::vector<VocabularyModel>& models, const std::string& reference) {
	for (size_t m = 0; m < models.size(); m++)
		if (models[m].merged && models[m].reference == reference) return static_cast<int>(m);
	fs::path dir;
	try {
		dir = fs::canonical(resolve_model_reference(reference));
	} catch (const std::exception&) { // not a model at all
		return -1;
	}
	for (size_t m = 0; m < models.size(); m++) {
		std::error_code ec;
		if (models[m].merged && fs::canonical(models[m].dir, ec) == dir && !ec) return static_cast<int>(m);
	}
	return -1;
}

std::vector<int> resolve_token_models(const TokenizerSpec& spec, const std::vector<VocabularyModel>& models) {
	std::vector<std::string> names;
	for (const auto& model : models)
		if (model.merged) names.push_back(model.reference);
	std::vector<int> resolved;
	for (const auto& [token, entry] : spec.tokens) {
		resolved.push_back(-1);
		if (entry.kind != TokenEmbeddingSpec::Kind::Model && entry.kind != TokenEmbeddingSpec::Kind::ModelToken)
			continue;
		resolved.back() = find_model(models, entry.model);
		if (resolved.back() < 0)
			throw Error(fmt::format("recipe: tokenizer.tokens['{}'].source: model '{}' is not one of the recipe's "
			                        "models ({})",
			                        token, entry.model, fmt::join(names, ", ")));
	}
	return resolved;
}

// A model's vocabulary, without the tokens that have no embedding row.
std::unordered_map<std::string, int64_t> usable_vocab(const TokenizerFiles& files, int64_t rows, const std::string& ref,
                                                      std::vector<std::string>& warnings) {
	auto vocab = files.vocab;
	if (rows < 0) return vocab;
	const auto dropped = std::erase_if(vocab, [&](const auto& item) { return item.second >= rows; });
	if (dropped)
		warnings.push_back(fmt::format("model '{}': {} token(s) of its tokenizer have ids beyond its {} embedding "
		                               "rows and are left out",
		                               ref, dropped, rows));
	return vocab;
}

// Tokens in id order (holes skipped).
std::vector<std::pair<std::string, int64_t>> by_id(const std::unordered_map<std::string, int64_t>& vocab) {
	std::vector<std::pair<std::string, int64_t>> tokens(vocab.begin(), vocab.end());
	std::sort(tokens.begin(), tokens.end(), [](const auto& a, const auto& b) {
		return a.second != b.second ? a.second < b.second : a.first < b.first;
	});
	return tokens;
}

int64_t id_span(const std::unordered_map<std::string, int64_t>& vocab) {
	int64_t span = 0;
	for (const auto& [token, id] : vocab)
		span = std::max(span, id + 1);
	return span;
}

// A token as transformers' add_tokens(str) adds it: normal, not special.
AddedToken added_token(const std::string& content) {
	AddedToken token;
	token.content = content;
	return token;
}

class VocabularyBuilder {
public:
	VocabularyBuilder(const TokenizerSpec& spec, const std::vector<VocabularyModel>& models, size_t base, size_t donor)
	    : spec_(spec), models_(models), base_(base), donor_(donor) {}

	Vocabulary build();

private:
	void read_models();
	void add_union_tokens();
	void append(AddedToken token);
	void map_model_rows();
	void warn_tokens_in_no_model();

	const TokenizerSpec& spec_;
	const std::vector<VocabularyModel>& models_;
	size_t base_, donor_;
	Vocabulary v_;
	std::vector<std::optional<TokenizerFiles>> files_;
	std::unordered_map<std::string, int64_t> out_; // output token -> id
	int64_t next_id_ = 0;
};

void VocabularyBuilder::read_models() {
	files_.resize(models_.size());
	v_.model_vocab.resize(models_.size());
	for (size_t m = 0; m < models_.size(); m++) {
		const auto& model = models_[m];
		if (!model.merged && m != donor_) continue;
		if (has_tokenizer_json(model.dir)) {
			files_[m] = read_tokenizer_files(model.dir);
			v_.model_vocab[m] = usable_vocab(*files_[m], model.rows, model.reference, v_.warnings);
		} else if (spec_.source == "union" || m == base_ || m == donor_) {
			throw Error(fmt::format("model '{}' has no tokenizer.json ({}): tokenizer source '{}' needs its vocabulary",
			                        model.reference, model.dir.string(), spec_.source));
		}
	}
	for (size_t m = 0; m < models_.size(); m++)
		if (models_[m].merged && !files_[m]) {
			v_.model_vocab[m] = v_.model_vocab[base_];
			v_.warnings.push_back(fmt::format("model '{}' has no tokenizer.json: assuming the vocabulary of '{}' (as "
			                                  "mergekit)",
			                                  models_[m].reference, models_[base_].reference));
		}
}

void VocabularyBuilder::append(AddedToken token) {
	if (out_.contains(token.content)) return;
	token.id = next_id_++;
	out_[token.content] = token.id;
	v_.output.appended.push_back(std::move(token));
}

// mergekit's union: the tokens each model has beyond the donor's, regular ones first (in model
// order, then id order), then added tokens with the flags of the first model that adds them.
void VocabularyBuilder::add_union_tokens() {
	std::vector<size_t> order{base_};
	for (size_t m = 0; m < models_.size(); m++)
		if (models_[m].merged && m != base_) order.push_back(m);
	std::vector<std::string> regular;
	std::vector<AddedToken> added;
	std::unordered_set<std::string> seen_regular, seen_added;
	for (const size_t m : order) {
		if (!files_[m]) continue;
		for (const auto& [token, id] : by_id(v_.model_vocab[m]))
			if (!files_[m]->is_added.contains(token) && seen_regular.insert(token).second) regular.push_back(token);
		for (const auto& token : files_[m]->added)
			if (v_.model_vocab[m].contains(token.content) && seen_added.insert(token.content).second)
				added.push_back(token);
	}
	for (const auto& token : regular)
		if (!seen_added.contains(token)) append(added_token(token));
	for (const auto& token : added)
		append(token);
}

// Output row r of model m: the model's id of the token at r; the donor's padding rows (after
// the vocabulary) come from each model's own padding rows, in order.
void VocabularyBuilder::map_model_rows() {
	const int64_t donor_span = id_span(v_.model_vocab[donor_]);
	const int64_t padding = models_[donor_].rows > donor_span ? models_[donor_].rows - donor_span : 0;
	v_.vocab_rows = static_cast<uint64_t>(next_id_);
	v_.rows = v_.vocab_rows + static_cast<uint64_t>(padding);
	if (const auto multiple = spec_.pad_to_multiple_of)
		v_.rows = (v_.rows + static_cast<uint64_t>(*multiple) - 1) / static_cast<uint64_t>(*multiple) *
		          static_cast<uint64_t>(*multiple);
	v_.tokens.assign(v_.vocab_rows, "");
	for (const auto& [token, id] : out_)
		v_.tokens[static_cast<size_t>(id)] = token;
	v_.model_rows.assign(models_.size(), {});
	for (size_t m = 0; m < models_.size(); m++) {
		if (!models_[m].merged) continue;
		auto& rows = v_.model_rows[m];
		rows.assign(v_.rows, -1);
		const auto& vocab = v_.model_vocab[m];
		for (size_t r = 0; r < v_.vocab_rows; r++)
			if (const auto it = vocab.find(v_.tokens[r]); !v_.tokens[r].empty() && it != vocab.end())
				rows[r] = it->second;
		const int64_t own_span = id_span(vocab);
		for (int64_t k = 0; k < padding && own_span + k < models_[m].rows; k++)
			rows[v_.vocab_rows + static_cast<uint64_t>(k)] = own_span + k;
	}
}

// As mergekit warns: such a token gets zero rows unless its tokens: entry names a source.
void VocabularyBuilder::warn_tokens_in_no_model() {
	std::vector<std::string> missing;
	for (size_t r = 0; r < v_.vocab_rows; r++) {
		bool found = v_.tokens[r].empty();
		for (size_t m = 0; m < models_.size() && !found; m++)
			found = models_[m].merged && v_.model_rows[m][r] >= 0;
		if (!found) missing.push_back("'" + v_.tokens[r] + "'");
	}
	if (!missing.empty())
		v_.warnings.push_back(fmt::format("token(s) in none of the models: {}; their rows are zeros unless a tokens: "
		                                  "entry gives a source",
		                                  fmt::join(missing, ", ")));
}

Vocabulary VocabularyBuilder::build() {
	v_.token_models = resolve_token_models(spec_, models_);
	read_models();
	auto& donor = *files_[donor_];
	const size_t before = donor.vocab.size();
	if (models_[donor_].rows >= 0) strip_tokens_from(donor, models_[donor_].rows);
	out_ = donor.vocab;
	next_id_ = donor.id_span();
	if (spec_.source == "union") add_union_tokens();
	for (const auto& [token, entry] : spec_.tokens)
		append(added_token(token));
	map_model_rows();
	warn_tokens_in_no_model();
	v_.output.donor_dir = models_[donor_].dir;
	if (donor.vocab.size() != before || !v_.output.appended.empty()) v_.output.files = std::move(donor);
	return std::move(v_);
}

// Where a token's fallback comes from, as (source, row) pairs to average; none: zeros.
using Picks = std::vector<std::pair<uint32_t, int64_t>>;

class RemapBuilder {
public:
	RemapBuilder(const Vocabulary& v, const TokenizerSpec& spec, const std::vector<size_t>& sources, int base_source,
	             const std::vector<VocabularyModel>& models, const std::string& tensor)
	    : v_(v), spec_(spec), sources_(sources), base_source_(base_source), models_(models), tensor_(tensor) {}

	RowRemap build();

private:
	Picks configured(const TokenEmbeddingSpec& entry, int model, const std::string& token, size_t row) const;
	Picks automatic(size_t row) const;
	uint32_t source_of(int model, const std::string& token) const;

	const Vocabulary& v_;
	const TokenizerSpec& spec_;
	const std::vector<size_t>& sources_;
	int base_source_;
	const std::vector<VocabularyModel>& models_;
	const std::string& tensor_;
};

uint32_t RemapBuilder::source_of(int model, const std::string& token) const {
	for (size_t s = 0; s < sources_.size(); s++)
		if (static_cast<int>(sources_[s]) == model) return static_cast<uint32_t>(s);
	throw Error(fmt::format("recipe: tokenizer.tokens['{}'].source: model '{}' is not a source of tensor '{}'", token,
	                        models_[static_cast<size_t>(model)].reference, tensor_));
}

// A tokens: entry with a source: zeros, the named model's row of this token, or its row of
// another token (model_token).
Picks RemapBuilder::configured(const TokenEmbeddingSpec& entry, int model, const std::string& token, size_t row) const {
	using Kind = TokenEmbeddingSpec::Kind;
	if (entry.kind == Kind::Zero) return {};
	const uint32_t s = source_of(model, token);
	const auto& ref = models_[sources_[s]].reference;
	if (entry.kind == Kind::Model) {
		const int64_t own = v_.model_rows[sources_[s]][row];
		if (own < 0)
			throw Error(
			    fmt::format("recipe: tokenizer.tokens['{}'].source: model '{}' has no token '{}'", token, ref, token));
		return {{s, own}};
	}
	int64_t id = entry.token_id.value_or(-1);
	if (entry.token) {
		const auto& vocab = v_.model_vocab[sources_[s]];
		const auto it = vocab.find(*entry.token);
		if (it == vocab.end())
			throw Error(fmt::format("recipe: tokenizer.tokens['{}'].source.token: model '{}' has no token '{}'", token,
			                        ref, *entry.token));
		id = it->second;
	}
	if (id >= models_[sources_[s]].rows)
		throw Error(fmt::format("recipe: tokenizer.tokens['{}'].source.token_id: {} is beyond the {} rows of model "
		                        "'{}'",
		                        token, id, models_[sources_[s]].rows, ref));
	return {{s, id}};
}

// mergekit's defaults for a token some model lacks: the one model that has it; zeros when none
// has; the base's row when the base has it; else the mean over the models that have it.
Picks RemapBuilder::automatic(size_t row) const {
	Picks present;
	std::vector<size_t> seen;
	for (size_t s = 0; s < sources_.size(); s++) {
		const int64_t own = v_.model_rows[sources_[s]][row];
		if (own < 0 || std::find(seen.begin(), seen.end(), sources_[s]) != seen.end()) continue;
		seen.push_back(sources_[s]);
		present.emplace_back(static_cast<uint32_t>(s), own);
	}
	if (present.size() <= 1) return present;
	if (base_source_ >= 0) {
		const int64_t own = v_.model_rows[sources_[static_cast<size_t>(base_source_)]][row];
		if (own >= 0) return {{static_cast<uint32_t>(base_source_), own}};
	}
	return present;
}

RowRemap RemapBuilder::build() {
	RowRemap remap;
	remap.rows = v_.rows;
	remap.vocab_rows = v_.vocab_rows;
	remap.fallback.resize(v_.vocab_rows);
	for (const auto model : sources_)
		remap.own.push_back(v_.model_rows[model]);
	std::unordered_map<std::string, size_t> entries;
	for (size_t i = 0; i < spec_.tokens.size(); i++)
		entries[spec_.tokens[i].first] = i;
	for (size_t r = 0; r < v_.vocab_rows; r++) {
		const auto& token = v_.tokens[r];
		const auto it = token.empty() ? entries.end() : entries.find(token);
		const TokenEmbeddingSpec* entry = it == entries.end() ? nullptr : &spec_.tokens[it->second].second;
		if (entry && entry->force)
			for (auto& own : remap.own)
				own[r] = -1;
		const bool needed =
		    std::any_of(remap.own.begin(), remap.own.end(), [&](const auto& own) { return own[r] < 0; });
		if (!needed || token.empty()) continue;
		if (entry && entry->kind != TokenEmbeddingSpec::Kind::Automatic)
			remap.fallback[r] = configured(*entry, v_.token_models[it->second], token, r);
		else
			remap.fallback[r] = automatic(r);
	}
	return remap;
}

} // namespace

RowRemap make_row_remap(const Vocabulary& vocabulary, const TokenizerSpec& spec, const std::vector<size_t>& sources,
                        int base_source, const std::vector<VocabularyModel>& models, const std::string& tensor) {
	return RemapBuilder(vocabulary, spec, sources, base_source, models, tensor).build();
}

Vocabulary build_vocabulary(const TokenizerSpec& spec, const std::vector<VocabularyModel>& models, size_t base,
                            size_t donor) {
	return VocabularyBuilder(spec, models, base, donor).build();
}

} // namespace weld

namespace weld {

std::optional<std::string> resolve_chat_template(const std::string& setting,
                                                 const std::vector<std::filesystem::path>& model_dirs) {
	if (setting == "auto") {
		std::vector<std::pair<std::string, size_t>> counts; // in order of first appearance
		for (const auto& dir : model_dirs) {
			auto found = read_chat_template(dir);
			if (!found) continue;
			const auto first = found->find_first_not_of(" \t\r\n");
			if (first == std::string::npos) continue;
			const auto text = found->substr(first, found->find_last_not_of(" \t\r\n") - first + 1);
			auto it = std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == text; });
			if (it == counts.end())
				counts.emplace_back(text, 1);
			else
				it->second++;
		}
		if (counts.empty()) return std::nullopt;
		return std::max_element(counts.begin(), counts.end(),
		                        [](const auto& a, const auto& b) { return a.second < b.second; })
		    ->first;
	}
	if (const auto builtin = builtin_chat_template(setting)) return std::string(*builtin);
	// As mergekit: a short text without a Jinja block cannot be a template, so it is a wrong name.
	if (setting.size() < 20 || setting.find('{') == std::string::npos) {
		std::vector<std::string_view> names;
		for (const auto& [name, text] : embedded_chat_templates())
			names.push_back(name);
		throw Error(fmt::format("recipe: chat_template: unknown template '{}' (built-in: {}; or 'auto', or a Jinja "
		                        "template)",
		                        setting, fmt::join(names, ", ")));
	}
	return setting;
}

} // namespace weld
