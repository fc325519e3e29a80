// The output vocabulary of a merge with mergekit's tokenizer settings (tokenizer_source, or the
// tokenizer: block with tokens and pad_to_multiple_of), and how each model's embedding rows map
// into it. Reads tokenizer files; touches no tensor data (the executor applies the RowRemap).
#pragma once

#include "io/tokenizer_files.h"
#include "plan/recipe.h"
#include "tensor/row_remap.h"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace weld {

struct VocabularyModel {
	std::string reference; // as the recipe writes it
	std::filesystem::path dir;
	int64_t rows = -1;   // rows of its embedding matrix; -1: it has none
	bool merged = false; // a source of the merge (not only the tokenizer's donor)
};

struct Vocabulary {
	TokenizerOutput output;          // the tokenizer files to write
	std::vector<std::string> tokens; // by output id; "" where no token has the id
	uint64_t vocab_rows = 0;         // rows named by tokens (one more than the largest id)
	uint64_t rows = 0;               // with the donor's padding rows kept and pad_to_multiple_of
	// Per model: its row for each output row, -1 where it has none.
	std::vector<std::vector<int64_t>> model_rows;
	// Per model: token -> its id (below its rows); models without a tokenizer get the base's.
	std::vector<std::unordered_map<std::string, int64_t>> model_vocab;
	std::vector<int> token_models; // per spec.tokens entry: the model its source names (-1: none)
	std::vector<std::string> warnings;
};

// Builds the output vocabulary as mergekit does: the donor's (base: models[base]; a model:
// models[donor]) tokens, with union adding every merged model's tokens it lacks (regular tokens
// first, then added tokens, in model order), then the tokens: keys it lacks. Throws weld::Error
// for unreadable tokenizer files, a model lacking tokenizer.json under union, and token
// sources naming a model that is not in the recipe.
Vocabulary build_vocabulary(const TokenizerSpec& spec, const std::vector<VocabularyModel>& models, size_t base,
                            size_t donor);

// How the sources of one embedding-like tensor (models[sources[i]]; base_source: the index in
// sources of the base model, -1 if absent) become rows of the output vocabulary: mergekit's
// PermutedEmbeddings rules. Throws weld::Error naming the tensor and token at fault.
RowRemap make_row_remap(const Vocabulary& vocabulary, const TokenizerSpec& spec, const std::vector<size_t>& sources,
                        int base_source, const std::vector<VocabularyModel>& models, const std::string& tensor);

// mergekit's chat_template setting: "auto" (the most common template, whitespace-trimmed, among
// the models in model_dirs, the first to appear winning a tie; nullopt when none has one), the
// name of a built-in template (io/chat_templates.h), or a Jinja template itself. Throws weld::Error
// for a name that is neither.
std::optional<std::string> resolve_chat_template(const std::string& setting,
                                                 const std::vector<std::filesystem::path>& model_dirs);

} // namespace weld
