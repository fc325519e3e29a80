// mergekit-style YAML recipes, parsed into plain data. Parsing checks structure and types;
// whether parameters suit the method is the plan's job.
#pragma once

#include "io/dtype.h"

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace weld {

// A parameter as written: a number or bool, a gradient (numbers interpolated piecewise-linearly
// over the layers), or filter rules ({filter: substring, value: setting}; first match wins, a
// rule without filter or with "*" matches every tensor).
struct ParamSetting {
	enum class Kind { Number, Bool, Gradient, Rules, Text, TextList };
	struct Rule;

	Kind kind = Kind::Number;
	double number = 0;              // Number, Bool (0 or 1)
	std::string text;               // Text: any other scalar (a path, a choice)
	std::vector<std::string> texts; // TextList: a list of such scalars (cabs' pruning_order)
	std::vector<double> gradient;
	std::vector<Rule> rules;
};

struct ParamSetting::Rule {
	std::optional<std::string> filter;
	ParamSetting value;
};

struct ParamValue {
	double number = 0;
	bool is_bool = false;
	bool is_text = false;
	std::string text = {};
};

// The value that applies to tensor_name at relative depth t in [0, 1]; nullopt when filter
// rules exist and none matches.
std::optional<ParamValue> evaluate_setting(const ParamSetting& setting, std::string_view tensor_name, double t);

using ParamSettings = std::vector<std::pair<std::string, ParamSetting>>;
const ParamSetting* find_setting(const ParamSettings& settings, std::string_view name);
// A Text parameter's value in settings, nullopt when absent. Throws weld::Error naming `where`
// and the parameter when it is set to something other than one string.
std::optional<std::string> text_setting(const ParamSettings& settings, std::string_view name, const std::string& where);
// A list of strings (one string counts as a list of one), nullopt when absent; throws like text_setting.
std::optional<std::vector<std::string>> text_list_setting(const ParamSettings& settings, std::string_view name,
                                                          const std::string& where);

struct SourceSpec {
	std::string model;
	std::optional<std::pair<int64_t, int64_t>> layer_range; // [first, last)
	ParamSettings parameters;
};

struct SliceSpec {
	std::vector<SourceSpec> sources;
	ParamSettings parameters;
};

// One entry of mergekit's `modules:` (multimodal models): the tensors of one part of the model
// (text_decoder, vision_tower, ...) merged from their own models or slices and parameters.
struct ModuleSpec {
	std::string name;
	std::vector<SourceSpec> models; // exactly one of models / slices is non-empty
	std::vector<SliceSpec> slices;
	ParamSettings parameters;
};

// An entry of the `tokenizer:` block's `tokens:` map (mergekit's TokenEmbeddingConfig): where the
// token's embedding comes from for models that lack it (or for every model, with force).
struct TokenEmbeddingSpec {
	enum class Kind { Automatic, Zero, Model, ModelToken };
	Kind kind = Kind::Automatic;      // Automatic: no source given, mergekit's default rules
	std::string model;                // Model, ModelToken: a model reference as the recipe writes it
	std::optional<int64_t> token_id;  // ModelToken: that model's row...
	std::optional<std::string> token; // ...or the row of this token in its vocabulary
	bool force = false;
};

// mergekit's `tokenizer:` block (or `tokenizer_source: X`, which is {source: X}).
struct TokenizerSpec {
	std::string source = "union"; // union, base, or a model reference
	std::vector<std::pair<std::string, TokenEmbeddingSpec>> tokens;
	std::optional<int64_t> pad_to_multiple_of;
};

struct Recipe {
	std::string merge_method;
	std::optional<std::string> base_model;
	std::vector<SourceSpec> models; // exactly one of models / slices / modules is non-empty
	std::vector<SliceSpec> slices;
	std::vector<ModuleSpec> modules; // in the order written
	ParamSettings parameters;
	std::optional<DType> dtype;
	std::optional<DType> out_dtype;
	std::optional<std::string> tokenizer_source;
	std::optional<TokenizerSpec> tokenizer;   // from `tokenizer:` or `tokenizer_source:`
	std::optional<std::string> chat_template; // auto, a built-in name, or a Jinja template
	std::string text;                         // the YAML as given
};

// Throws weld::Error "<label>: <key path>: <what is wrong>" for malformed recipes, unknown keys
// (listing the valid ones) and wrong types.
Recipe parse_recipe(const std::string& yaml_text, const std::string& label);

} // namespace weld
