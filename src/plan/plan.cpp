#include "plan/plan.h"
#include "io/gguf_model.h"
#include "lora/reference.h"

#include "plan/modules.h"
#include "plan/vocabulary.h"

#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <numeric>
#include <optional>
#include <set>

namespace weld {
namespace {

// One input of an output slice, after `models:` has been turned into a single slice.
struct SliceSource {
	size_t model;
	int64_t first_layer;
	int64_t last_layer;
	const ParamSettings* params; // nullptr: none
};

struct Slice {
	std::vector<SliceSource> sources;
	const ParamSettings* params; // nullptr: none
};

// "model.layers.7.mlp.up_proj.weight" -> {"model.layers.", 7, ".mlp.up_proj.weight"}
struct LayerName {
	std::string prefix;
	int64_t layer;
	std::string suffix;
};

std::optional<LayerName> split_layer_name(const std::string& name) {
	for (size_t pos = name.find("layers."); pos != std::string::npos; pos = name.find("layers.", pos + 1)) {
		if (pos > 0 && name[pos - 1] != '.') continue;
		size_t digits = pos + 7, end = digits;
		while (end < name.size() && end - digits < 9 && std::isdigit(static_cast<unsigned char>(name[end])))
			end++;
		if (end == digits || end >= name.size() || name[end] != '.') continue;
		return LayerName{name.substr(0, digits), std::stoll(name.substr(digits, end - digits)), name.substr(end)};
	}
	return std::nullopt;
}

// Embedding and output matrices may have a larger vocabulary than the base (added tokens).
bool is_vocab_matrix(const std::string& name) {
	return name.find("embed_tokens") != std::string::npos || name.find("lm_head") != std::string::npos ||
	       name.find("wte") != std::string::npos || name.find("word_embeddings") != std::string::npos;
}

std::string shape_string(const std::vector<uint64_t>& shape) {
	return fmt::format("[{}]", fmt::join(shape, ", "));
}

class Planner {
public:
	Planner(Plan& plan, const ComputedStatistics& computed, const std::filesystem::path& lora_scratch)
	    : plan_(plan), recipe_(plan.recipe), method_(*plan.method), computed_(computed), lora_scratch_(lora_scratch) {}

	void run();

private:
	size_t open_model(const std::string& reference);
	int64_t layer_count(size_t model) const;
	std::vector<Slice> make_slices(const std::vector<SourceSpec>& models, const std::vector<SliceSpec>& slice_specs,
	                               const std::string& where);
	void run_modules();
	bool in_scope(const std::string& tensor) const;
	void plan_tensor(const std::string& out_name, double t, const Slice& slice,
	                 const std::vector<std::string>& source_names);
	int64_t plan_layers(const std::vector<Slice>& slices);
	const std::vector<LayerName>& names_at(size_t model, int64_t layer);
	void check_same_tensors(const SliceSource& tmpl, const SliceSource& source, int64_t offset);
	const SliceSource& template_source(const Slice& slice) const;
	void resolve_params(TensorJob& job, const std::string& out_name, double t, const Slice& slice,
	                    const std::vector<std::string>& source_names);
	std::optional<ParamValue> lookup(const ParamDef& def, const std::vector<const ParamSettings*>& levels,
	                                 const std::string& tensor, double t) const;
	void check_model_order() const;
	void order_sources(TensorJob& job, const Slice& slice) const;
	// Sets each config.json key (nested "a.b" where it exists) to its output layer count.
	void make_config(const std::vector<std::pair<std::string, int64_t>>& layer_counts);
	void open_statistics(const std::vector<Slice>& slices);
	void check_statistics(size_t model, const std::string& path);
	const ModelFolder::Tensor* statistics_for(size_t model, const ModelFolder::Tensor& tensor) const;
	void plan_tokenizer(const std::vector<Slice>& slices);
	int64_t embedding_rows(size_t model) const;
	void remap_vocab_rows(TensorJob& job, const std::string& out_name);

	const std::string& ref(size_t model) const { return plan_.models[model].reference; }
	const ModelFolder& folder(size_t model) const { return *plan_.models[model].folder; }

	Plan& plan_;
	const Recipe& recipe_;
	const MergeMethod& method_;
	const ComputedStatistics& computed_;
	const std::filesystem::path& lora_scratch_;
	std::vector<std::map<int64_t, std::vector<LayerName>>> names_; // per model, by layer (-1: none)
	// With `modules:`, which module owns each tensor and the one being planned (-1: all tensors).
	std::unique_ptr<ModuleMap> modules_;
	int module_ = -1;
	const ParamSettings* module_params_ = nullptr;
	std::optional<Vocabulary> vocabulary_; // under a tokenizer setting
	std::vector<VocabularyModel> vocabulary_models_;
	std::map<std::pair<std::vector<size_t>, int>, std::shared_ptr<const RowRemap>> remaps_; // by sources and base
};

bool Planner::in_scope(const std::string& tensor) const {
	return module_ < 0 || modules_->owner(tensor) == module_;
}

size_t Planner::open_model(const std::string& reference) {
	for (size_t i = 0; i < plan_.models.size(); i++)
		if (plan_.models[i].reference == reference) return i;
	if (auto lora = split_lora_reference(reference)) {
		auto applied = std::make_shared<LoraAppliedModel>(*lora, lora_scratch_);
		plan_.models.push_back(
		    PlannedModel{reference, applied, std::make_unique<ModelFolder>(applied->dir()), nullptr});
		return plan_.models.size() - 1;
	}
	if (is_gguf_reference(reference)) {
		auto converted = std::make_shared<GgufConvertedModel>(reference, lora_scratch_);
		plan_.models.push_back(
		    PlannedModel{reference, nullptr, std::make_unique<ModelFolder>(converted->dir()), converted});
		return plan_.models.size() - 1;
	}
	auto dir = resolve_model_reference(reference);
	plan_.models.push_back(PlannedModel{reference, nullptr, std::make_unique<ModelFolder>(dir), nullptr});
	return plan_.models.size() - 1;
}

int64_t Planner::layer_count(size_t model) const {
	const auto& config = folder(model).config();
	const bool whole_model = module_ < 0 || modules_->modules()[static_cast<size_t>(module_)].prefix.empty();
	if (config && config->num_hidden_layers && whole_model) return *config->num_hidden_layers;
	int64_t count = 0;
	for (const auto& tensor : folder(model).tensors())
		if (auto layer = split_layer_name(tensor.info->name); layer && in_scope(tensor.info->name))
			count = std::max(count, layer->layer + 1);
	return count;
}

std::vector<Slice> Planner::make_slices(const std::vector<SourceSpec>& models,
                                        const std::vector<SliceSpec>& slice_specs, const std::string& where) {
	const bool needs_base = method_.info().base == BaseModel::Required;
	const bool wants_base = method_.info().base != BaseModel::Ignored && recipe_.base_model;
	if (recipe_.base_model) plan_.base_model = static_cast<int>(open_model(*recipe_.base_model));
	if (needs_base && !recipe_.base_model)
		throw Error(fmt::format("recipe: method '{}' needs a base_model", method_.info().name));

	std::vector<Slice> slices;
	if (!models.empty()) {
		// mergekit turns `models:` into one slice over every layer, adding the base if absent.
		Slice slice{{}, nullptr};
		bool has_base = false;
		for (const auto& spec : models) {
			const size_t m = open_model(spec.model);
			has_base = has_base || static_cast<int>(m) == plan_.base_model;
			slice.sources.push_back({m, 0, layer_count(m), &spec.parameters});
		}
		if (wants_base && !has_base) {
			const auto m = static_cast<size_t>(plan_.base_model);
			slice.sources.push_back({m, 0, layer_count(m), nullptr});
		}
		slices.push_back(std::move(slice));
		return slices;
	}
	for (size_t i = 0; i < slice_specs.size(); i++) {
		const auto& spec = slice_specs[i];
		Slice slice{{}, &spec.parameters};
		bool has_base = false;
		for (const auto& source : spec.sources) {
			const size_t m = open_model(source.model);
			has_base = has_base || static_cast<int>(m) == plan_.base_model;
			const auto [first, last] = *source.layer_range;
			if (last > layer_count(m))
				throw Error(
				    fmt::format("recipe: {}slices[{}]: layer_range [{}, {}) exceeds the {} layers of model '{}'", where,
				                i, first, last, layer_count(m), source.model));
			slice.sources.push_back({m, first, last, &source.parameters});
		}
		const auto length = slice.sources[0].last_layer - slice.sources[0].first_layer;
		for (const auto& s : slice.sources)
			if (s.last_layer - s.first_layer != length)
				throw Error(
				    fmt::format("recipe: {}slices[{}]: every source must span the same number of layers", where, i));
		if (needs_base && !has_base)
			throw Error(fmt::format("recipe: {}slices[{}]: base model '{}' must be one of the sources for method '{}'",
			                        where, i, *recipe_.base_model, method_.info().name));
		slices.push_back(std::move(slice));
	}
	return slices;
}

// Levenshtein distance, for "did you mean" on misspelled parameter names.
size_t edit_distance(std::string_view a, std::string_view b) {
	std::vector<size_t> row(b.size() + 1);
	std::iota(row.begin(), row.end(), size_t{0});
	for (size_t i = 1; i <= a.size(); ++i) {
		size_t diagonal = row[0];
		row[0] = i;
		for (size_t j = 1; j <= b.size(); ++j) {
			const size_t above = row[j];
			row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
			diagonal = above;
		}
	}
	return row[b.size()];
}

// Every parameter name some weld method declares (recipes copied from model cards carry leftovers
// such as `weight` on methods that take none; mergekit ignores them).
std::set<std::string, std::less<>> every_method_parameter() {
	std::set<std::string, std::less<>> names;
	for (const auto* method : all_methods()) {
		for (const auto& def : method->info().global_params)
			names.insert(def.name);
		for (const auto& def : method->info().model_params)
			names.insert(def.name);
	}
	return names;
}

std::string closest_name(std::string_view name, const std::set<std::string, std::less<>>& names) {
	std::string best;
	size_t best_distance = std::max<size_t>(2, name.size() / 3) + 1;
	for (const auto& candidate : names)
		if (const size_t d = edit_distance(name, candidate); d < best_distance) best = candidate, best_distance = d;
	return best;
}

} // namespace

void check_param_value(const ParamDef& def, const ParamValue& value, std::string_view tensor, std::string_view where) {
	if (value.is_text)
		throw Error(fmt::format("{}: parameter '{}' must be {}, got '{}'", where, def.name,
		                        def.type == ParamType::Bool ? "true or false" : "a number", value.text));
	if (def.type == ParamType::Number && value.is_bool)
		throw Error(fmt::format("{}: parameter '{}' must be a number, not true/false", where, def.name));
	if (def.type == ParamType::Bool && !value.is_bool && value.number != 0 && value.number != 1)
		throw Error(fmt::format("{}: parameter '{}' must be true or false, got {}", where, def.name, value.number));
	const double v = value.number;
	if (def.type == ParamType::Number &&
	    (v > def.max_value || v < def.min_value || (def.min_exclusive && v == def.min_value)))
		throw Error(fmt::format("{}: parameter '{}' is {:g} for tensor '{}', outside {}{:g}, {:g}]", where, def.name, v,
		                        tensor, def.min_exclusive ? "(" : "[", def.min_value, def.max_value));
}

std::vector<std::string> check_parameter_names(const MethodInfo& info, const Recipe& recipe) {
	std::vector<std::string> warnings;
	std::vector<std::string> valid;
	for (const auto& def : info.global_params)
		valid.push_back(def.name);
	for (const auto& def : info.model_params)
		valid.push_back(def.name);
	const auto known = every_method_parameter();
	std::set<std::string> warned;
	auto check = [&](const ParamSettings& settings, const std::string& where) {
		for (const auto& [name, setting] : settings) {
			if (std::find(valid.begin(), valid.end(), name) != valid.end()) continue;
			if (known.count(name)) {
				if (warned.insert(name).second)
					warnings.push_back(fmt::format("recipe: {}: parameter '{}' is ignored: method '{}' does not "
					                               "take it (as mergekit)",
					                               where, name, info.name));
				continue;
			}
			const auto guess = closest_name(name, known);
			throw Error(fmt::format("recipe: {}: unknown parameter '{}' for method '{}'{} (valid: {})", where, name,
			                        info.name, guess.empty() ? "" : fmt::format("; did you mean '{}'?", guess),
			                        valid.empty() ? "none" : fmt::format("{}", fmt::join(valid, ", "))));
		}
	};
	check(recipe.parameters, "parameters");
	for (size_t i = 0; i < recipe.models.size(); i++)
		check(recipe.models[i].parameters, fmt::format("models[{}].parameters", i));
	for (size_t i = 0; i < recipe.slices.size(); i++) {
		check(recipe.slices[i].parameters, fmt::format("slices[{}].parameters", i));
		for (size_t j = 0; j < recipe.slices[i].sources.size(); j++)
			check(recipe.slices[i].sources[j].parameters, fmt::format("slices[{}].sources[{}].parameters", i, j));
	}
	for (const auto& module : recipe.modules) {
		const auto where = "modules." + module.name;
		check(module.parameters, where + ".parameters");
		for (size_t i = 0; i < module.models.size(); i++)
			check(module.models[i].parameters, fmt::format("{}.models[{}].parameters", where, i));
		for (size_t i = 0; i < module.slices.size(); i++) {
			check(module.slices[i].parameters, fmt::format("{}.slices[{}].parameters", where, i));
			for (size_t j = 0; j < module.slices[i].sources.size(); j++)
				check(module.slices[i].sources[j].parameters,
				      fmt::format("{}.slices[{}].sources[{}].parameters", where, i, j));
		}
	}
	return warnings;
}

namespace {

std::optional<ParamValue> Planner::lookup(const ParamDef& def, const std::vector<const ParamSettings*>& levels,
                                          const std::string& tensor, double t) const {
	for (const auto* level : levels) {
		if (!level) continue;
		const auto* setting = find_setting(*level, def.name);
		if (!setting) continue;
		auto value = evaluate_setting(*setting, tensor, t);
		if (!value) continue;
		check_param_value(def, *value, tensor, "recipe");
		return value;
	}
	return std::nullopt;
}

void Planner::resolve_params(TensorJob& job, const std::string& out_name, double t, const Slice& slice,
                             const std::vector<std::string>& source_names) {
	const auto& info = method_.info();
	const ParamSettings* slice_params = slice.params;
	for (const auto& def : info.global_params) {
		if (def.type == ParamType::Text) continue; // read once per recipe, not per tensor
		if (auto value = lookup(def, {slice_params, module_params_, &recipe_.parameters}, out_name, t))
			job.params[def.name] = value->number;
		else if (def.required)
			throw Error(
			    fmt::format("recipe: method '{}' needs parameter '{}' (tensor '{}')", info.name, def.name, out_name));
		else if (def.has_default)
			job.params[def.name] = def.default_value;
	}
	for (size_t s = 0; s < slice.sources.size(); s++) {
		ParamValues values;
		const bool is_base = static_cast<int>(s) == job.base_index;
		for (const auto& def : info.model_params) {
			if (def.type == ParamType::Text) continue;
			if (auto value = lookup(def, {slice.sources[s].params, slice_params, module_params_, &recipe_.parameters},
			                        source_names[s], t))
				values[def.name] = value->number;
			else if (def.required && !is_base)
				throw Error(fmt::format("recipe: method '{}' needs parameter '{}' for model '{}' (tensor '{}')",
				                        info.name, def.name, ref(slice.sources[s].model), source_names[s]));
			else if (def.has_default && !def.required)
				values[def.name] = def.default_value;
		}
		job.source_params.push_back(std::move(values));
	}
	if (!info.model_order.empty()) order_sources(job, slice);
}

// Every name in the method's model-order list (cabs' pruning_order) must be a recipe model.
void Planner::check_model_order() const {
	const auto& name = method_.info().model_order;
	if (name.empty()) return;
	const auto listed = text_list_setting(recipe_.parameters, name, "parameters");
	if (!listed) return;
	std::vector<std::string> refs;
	for (const auto& model : plan_.models)
		refs.push_back(model.reference);
	for (const auto& entry : *listed)
		if (std::find(refs.begin(), refs.end(), entry) == refs.end())
			throw Error(fmt::format("recipe: parameters.{}: '{}' is not a model of the recipe (models: {})", name,
			                        entry, fmt::join(refs, ", ")));
}

// Each source's place in the method's model order (MethodInfo::model_order).
void Planner::order_sources(TensorJob& job, const Slice& slice) const {
	const auto& name = method_.info().model_order;
	auto order = text_list_setting(recipe_.parameters, name, "parameters");
	if (!order) {
		order.emplace();
		for (const auto& source : slice.sources)
			order->push_back(ref(source.model));
		std::sort(order->begin(), order->end());
	}
	for (size_t s = 0; s < slice.sources.size(); s++) {
		const auto it = std::find(order->begin(), order->end(), ref(slice.sources[s].model));
		job.source_params[s][name] = it == order->end() ? -1.0 : static_cast<double>(it - order->begin());
	}
}

void Planner::plan_tensor(const std::string& out_name, double t, const Slice& slice,
                          const std::vector<std::string>& source_names) {
	const auto& info = method_.info();
	TensorJob job;
	job.name = out_name;
	for (size_t s = 0; s < slice.sources.size(); s++) {
		const size_t m = slice.sources[s].model;
		const auto* tensor = folder(m).find(source_names[s]);
		if (!tensor)
			throw Error(fmt::format("tensor '{}' is missing from model '{}' ({})", source_names[s], ref(m),
			                        folder(m).dir().string()));
		if (!info.copy_only && !dtype_is_arithmetic(tensor->info->dtype))
			throw Error(fmt::format("tensor '{}' of model '{}' is {}: method '{}' cannot do arithmetic on it "
			                        "(only F16, BF16, F32, F64)",
			                        source_names[s], ref(m), dtype_safetensors_name(tensor->info->dtype), info.name));
		if (static_cast<int>(m) == plan_.base_model) job.base_index = static_cast<int>(s);
		job.sources.push_back({m, tensor, tensor->info->numel(), statistics_for(m, *tensor)});
	}
	if (job.sources.size() < info.min_sources || (info.max_sources && job.sources.size() > info.max_sources)) {
		const auto wanted = info.min_sources == info.max_sources ? fmt::format("{}", info.min_sources)
		                    : info.max_sources == 0              ? fmt::format("at least {}", info.min_sources)
		                                            : fmt::format("{} to {}", info.min_sources, info.max_sources);
		throw Error(fmt::format("tensor '{}': method '{}' takes {} source model(s), base included; the recipe gives {}",
		                        out_name, info.name, wanted, job.sources.size()));
	}

	// The reference shape is the base's (else the first source's); larger vocabularies are cut,
	// or, under a tokenizer setting, rearranged into the output vocabulary.
	const auto& reference = job.sources[job.base_index >= 0 ? job.base_index : 0];
	job.shape = reference.tensor->info->shape;
	if (vocabulary_ && is_vocab_matrix(out_name) && job.shape.size() == 2) remap_vocab_rows(job, out_name);
	for (auto& source : job.sources) {
		if (job.rows) break;
		const auto& shape = source.tensor->info->shape;
		if (shape == job.shape) continue;
		const bool cut_rows = is_vocab_matrix(out_name) && shape.size() == 2 && job.shape.size() == 2 &&
		                      shape[1] == job.shape[1] && shape[0] > job.shape[0];
		if (!cut_rows)
			throw Error(fmt::format("tensor '{}' of model '{}' has shape {}, but model '{}' has {}",
			                        source.tensor->info->name, ref(source.model), shape_string(shape),
			                        ref(reference.model), shape_string(job.shape)));
		source.numel = reference.tensor->info->numel();
		plan_.warnings.push_back(fmt::format("tensor '{}' of model '{}' has {} rows, using the first {} (as mergekit)",
		                                     source.tensor->info->name, ref(source.model), shape[0], job.shape[0]));
	}

	const DType in_dtype = reference.tensor->info->dtype;
	const auto wanted = recipe_.out_dtype ? recipe_.out_dtype : recipe_.dtype;
	job.out_dtype = (wanted && dtype_is_arithmetic(in_dtype)) ? *wanted : in_dtype;
	resolve_params(job, out_name, t, slice, source_names);
	plan_.jobs.push_back(std::move(job));
}

const std::vector<LayerName>& Planner::names_at(size_t model, int64_t layer) {
	if (names_.size() <= model) names_.resize(plan_.models.size());
	auto& by_layer = names_[model];
	if (by_layer.empty()) {
		by_layer[-1];
		for (const auto& tensor : folder(model).tensors()) {
			const auto& name = tensor.info->name;
			if (!in_scope(name)) continue;
			auto parts = split_layer_name(name);
			if (parts)
				by_layer[parts->layer].push_back(*parts);
			else
				by_layer[-1].push_back(LayerName{name, -1, ""});
		}
	}
	static const std::vector<LayerName> none;
	auto it = by_layer.find(layer);
	return it == by_layer.end() ? none : it->second;
}

// Every source must hold the same tensors as the template at this layer (-1: outside layers).
// Tensors the template has and a source lacks are reported when the source is looked up.
void Planner::check_same_tensors(const SliceSource& tmpl, const SliceSource& source, int64_t offset) {
	auto key = [](const LayerName& n) { return n.prefix + "#" + n.suffix; };
	const int64_t tmpl_layer = offset < 0 ? -1 : tmpl.first_layer + offset;
	const int64_t source_layer = offset < 0 ? -1 : source.first_layer + offset;
	std::vector<std::string> expected;
	for (const auto& n : names_at(tmpl.model, tmpl_layer))
		expected.push_back(key(n));
	std::sort(expected.begin(), expected.end());
	for (const auto& n : names_at(source.model, source_layer))
		if (!std::binary_search(expected.begin(), expected.end(), key(n)))
			throw Error(fmt::format("tensor '{}{}{}' of model '{}' has no counterpart in model '{}'", n.prefix,
			                        offset < 0 ? "" : std::to_string(source_layer), n.suffix, ref(source.model),
			                        ref(tmpl.model)));
}

// The source whose tensor names define the output: the base model where it takes part.
const SliceSource& Planner::template_source(const Slice& slice) const {
	for (const auto& source : slice.sources)
		if (static_cast<int>(source.model) == plan_.base_model) return source;
	return slice.sources[0];
}

int64_t Planner::plan_layers(const std::vector<Slice>& slices) {
	std::vector<std::string> pre, post;
	for (const auto* slice : {&slices.front(), &slices.back()})
		for (const auto& source : slice->sources)
			check_same_tensors(template_source(*slice), source, -1);
	for (const auto& n : names_at(template_source(slices.front()).model, -1))
		if (n.prefix.find("embed") != std::string::npos) pre.push_back(n.prefix);
	for (const auto& n : names_at(template_source(slices.back()).model, -1))
		if (n.prefix.find("embed") == std::string::npos) post.push_back(n.prefix);
	auto same_names = [](const Slice& slice, const std::string& name) {
		return std::vector<std::string>(slice.sources.size(), name);
	};
	// As in mergekit: embeddings come from the first slice's sources, the rest from the last's, t = 0.
	for (const auto& name : pre)
		plan_tensor(name, 0, slices.front(), same_names(slices.front(), name));

	int64_t out_layer = 0;
	for (const auto& slice : slices) {
		const auto& tmpl = template_source(slice);
		const auto length = tmpl.last_layer - tmpl.first_layer;
		for (int64_t offset = 0; offset < length; offset++, out_layer++) {
			const double t = length > 1 ? static_cast<double>(offset) / static_cast<double>(length - 1) : 1.0;
			for (const auto& source : slice.sources)
				check_same_tensors(tmpl, source, offset);
			for (const auto& parts : names_at(tmpl.model, tmpl.first_layer + offset)) {
				std::vector<std::string> names;
				for (const auto& s : slice.sources)
					names.push_back(fmt::format("{}{}{}", parts.prefix, s.first_layer + offset, parts.suffix));
				plan_tensor(fmt::format("{}{}{}", parts.prefix, out_layer, parts.suffix), t, slice, names);
			}
		}
	}
	for (const auto& name : post)
		plan_tensor(name, 0, slices.back(), same_names(slices.back(), name));
	return out_layer;
}

void Planner::make_config(const std::vector<std::pair<std::string, int64_t>>& layer_counts) {
	const size_t source = plan_.base_model >= 0 ? static_cast<size_t>(plan_.base_model) : 0;
	const auto& config = folder(source).config();
	if (!config) return;
	auto json = nlohmann::ordered_json::parse(config->text);
	if (const auto wanted = recipe_.out_dtype ? recipe_.out_dtype : recipe_.dtype)
		json["torch_dtype"] = std::string(dtype_torch_name(*wanted));
	for (const auto& [key, count] : layer_counts) {
		nlohmann::ordered_json* node = &json;
		const auto dot = key.find('.');
		if (dot != std::string::npos) {
			const auto outer = key.substr(0, dot);
			if (!json.contains(outer) || !json[outer].is_object()) continue;
			node = &json[outer];
		}
		const auto leaf = dot == std::string::npos ? key : key.substr(dot + 1);
		if (node->contains(leaf)) (*node)[leaf] = count;
	}
	if (vocabulary_) json["vocab_size"] = vocabulary_->rows;
	plan_.config_json = json.dump(2) + "\n";
}

std::string statistics_kind(const ModelFolder& stats) {
	for (const auto& t : stats.tensors())
		for (const auto& [key, value] : t.file->metadata())
			if (key == "weld_stats") return value;
	return "";
}

// Each model's `stats` folder, opened and checked against the model: the kind the method needs,
// and every statistic named after one of the model's tensors, of the shape the kind implies.
void Planner::open_statistics(const std::vector<Slice>& slices) {
	plan_.statistics.resize(plan_.models.size());
	plan_.statistics_kinds.resize(plan_.models.size());
	const auto& kind = method_.info().statistics;
	if (kind.empty()) return; // a method without statistics does not declare stats, and its data: is its own
	std::vector<std::string> paths(plan_.models.size());
	for (size_t i = 0; i < slices.size(); ++i)
		for (const auto& source : slices[i].sources) {
			if (!source.params) continue;
			const auto where = fmt::format("model '{}'", ref(source.model));
			auto path = text_setting(*source.params, "stats", where);
			const auto data = text_setting(*source.params, "data", where);
			if (path && data) throw Error(fmt::format("recipe: {}: give stats or data, not both", where));
			if (data) {
				const auto it = computed_.find(ref(source.model));
				if (it == computed_.end())
					throw Error(fmt::format("recipe: {}: statistics from a data: file are computed by `weld merge` "
					                        "itself, not in --dry-run or a distributed merge; run weld stats first "
					                        "and give stats: instead",
					                        where));
				path = it->second;
			}
			if (!path) continue;
			if (!paths[source.model].empty() && paths[source.model] != *path)
				throw Error(fmt::format("recipe: model '{}' is given two stats folders: {} and {}", ref(source.model),
				                        paths[source.model], *path));
			paths[source.model] = *path;
		}
	for (size_t m = 0; m < plan_.models.size(); ++m) {
		if (!paths[m].empty()) {
			check_statistics(m, paths[m]);
		} else if (!kind.empty() && static_cast<int>(m) != plan_.base_model) {
			throw Error(fmt::format("recipe: method '{}' needs {} statistics of model '{}': set its parameters: "
			                        "{{stats: FOLDER}} to {}",
			                        method_.info().name, kind, ref(m), statistics_origin(kind)));
		}
	}
}

void Planner::check_statistics(size_t m, const std::string& path) {
	const auto& kind = method_.info().statistics;
	if (!std::filesystem::is_directory(path))
		throw Error(fmt::format("recipe: stats of model '{}': {} is not a folder (give the folder weld stats wrote)",
		                        ref(m), path));
	auto stats = std::make_unique<ModelFolder>(path);
	const auto found = statistics_kind(*stats);
	if (found.empty())
		throw Error(fmt::format("recipe: stats of model '{}': {} is not a weld stats output (no weld_stats in its "
		                        "safetensors metadata)",
		                        ref(m), path));
	const auto accepted = "|" + kind + "|";
	if (accepted.find("|" + found + "|") == std::string::npos)
		throw Error(fmt::format("recipe: stats of model '{}': {} holds {} statistics; method '{}' needs {} ({})",
		                        ref(m), path, found, method_.info().name, kind, statistics_origin(kind)));
	for (const auto& t : stats->tensors()) {
		const auto* weight = folder(m).find(t.info->name);
		if (!weight)
			throw Error(
			    fmt::format("stats {}: tensor '{}' is not a tensor of model '{}' (statistics of another model?)", path,
			                t.info->name, ref(m)));
		const auto& shape = weight->info->shape;
		const auto expected = found == "gram" && shape.size() == 2 ? std::vector<uint64_t>{shape[1], shape[1]} : shape;
		if (t.info->shape != expected || !dtype_is_arithmetic(t.info->dtype))
			throw Error(fmt::format("stats {}: tensor '{}' has shape {}; {} statistics of model '{}' need {}", path,
			                        t.info->name, shape_string(t.info->shape), found, ref(m), shape_string(expected)));
	}
	plan_.statistics[m] = std::move(stats);
	plan_.statistics_kinds[m] = found;
}

const ModelFolder::Tensor* Planner::statistics_for(size_t m, const ModelFolder::Tensor& tensor) const {
	if (m >= plan_.statistics.size() || !plan_.statistics[m]) return nullptr;
	const auto* found = plan_.statistics[m]->find(tensor.info->name);
	// Only Gram matrices are sparse (linear weights alone); the other kinds cover every tensor.
	if (!found && plan_.statistics_kinds[m] != "gram")
		throw Error(fmt::format("stats {}: no {} statistics for tensor '{}' of model '{}'",
		                        plan_.statistics[m]->dir().string(), plan_.statistics_kinds[m], tensor.info->name,
		                        ref(m)));
	return found;
}

void Planner::run() {
	for (auto& warning : check_parameter_names(method_.info(), recipe_))
		plan_.warnings.push_back(std::move(warning));
	if (!recipe_.modules.empty()) return run_modules();
	const auto slices = make_slices(recipe_.models, recipe_.slices, "");
	check_model_order();
	open_statistics(slices);
	plan_tokenizer(slices);
	make_config({{"num_hidden_layers", plan_layers(slices)}});
}

// mergekit's modules: each module's tensors planned from its own models or slices and parameters.
void Planner::run_modules() {
	if (recipe_.base_model) plan_.base_model = static_cast<int>(open_model(*recipe_.base_model));
	const auto& first = recipe_.modules[0];
	const size_t layout_model =
	    plan_.base_model >= 0
	        ? static_cast<size_t>(plan_.base_model)
	        : open_model(first.models.empty() ? first.slices[0].sources[0].model : first.models[0].model);
	modules_ = std::make_unique<ModuleMap>(folder(layout_model), ref(layout_model), recipe_.modules);
	std::vector<std::vector<Slice>> slices(recipe_.modules.size());
	std::vector<Slice> every_slice;
	for (size_t i = 0; i < recipe_.modules.size(); i++) {
		const auto& module = recipe_.modules[i];
		module_ = static_cast<int>(modules_->of_spec(i));
		slices[i] = make_slices(module.models, module.slices, "modules." + module.name + ".");
		every_slice.insert(every_slice.end(), slices[i].begin(), slices[i].end());
	}
	check_model_order();
	open_statistics(every_slice);
	plan_tokenizer(every_slice);
	std::vector<std::pair<std::string, int64_t>> layer_counts;
	for (size_t i = 0; i < recipe_.modules.size(); i++) {
		module_ = static_cast<int>(modules_->of_spec(i));
		module_params_ = &recipe_.modules[i].parameters;
		names_.clear();
		const int64_t layers = plan_layers(slices[i]);
		if (const auto& key = modules_->modules()[static_cast<size_t>(module_)].layers_key; !key.empty())
			layer_counts.emplace_back(key, layers);
	}
	make_config(layer_counts);
}

// The rows of a model's embedding matrix (embed_tokens and the like before lm_head); -1: none.
int64_t Planner::embedding_rows(size_t model) const {
	const ModelFolder::Tensor* found = nullptr;
	for (const auto& tensor : folder(model).tensors()) {
		const auto& name = tensor.info->name;
		if (!is_vocab_matrix(name) || tensor.info->shape.size() != 2) continue;
		if (!found ||
		    (found->info->name.find("lm_head") != std::string::npos && name.find("lm_head") == std::string::npos))
			found = &tensor;
	}
	return found ? static_cast<int64_t>(found->info->shape[0]) : -1;
}

// Which tokenizer files the output gets, the output vocabulary under a tokenizer setting, and
// the chat template.
void Planner::plan_tokenizer(const std::vector<Slice>& slices) {
	const size_t base = plan_.base_model >= 0 ? static_cast<size_t>(plan_.base_model) : slices[0].sources[0].model;
	const size_t merged = plan_.models.size();
	size_t donor = base;
	const auto& spec = recipe_.tokenizer;
	if (spec && spec->source != "base" && spec->source != "union") donor = open_model(spec->source);
	plan_.tokenizer.donor_dir = folder(donor).dir();
	if (recipe_.chat_template) {
		std::vector<std::filesystem::path> dirs;
		for (size_t m = 0; m < merged; m++)
			dirs.push_back(folder(m).dir());
		plan_.tokenizer.chat_template = resolve_chat_template(*recipe_.chat_template, dirs);
		const auto& dir = folder(donor).dir();
		const bool has_config = read_tokenizer_config(dir).has_value(); // parsed now, not once the weights are written
		if (!has_config && !has_tokenizer_json(dir)) {
			plan_.warnings.push_back(fmt::format("chat_template: model '{}' has no tokenizer files; the template is "
			                                     "not written (as mergekit)",
			                                     ref(donor)));
			plan_.tokenizer.chat_template.reset();
		}
	}
	if (!spec) return;
	if (spec->source != "union" && spec->tokens.empty() && !spec->pad_to_multiple_of &&
	    !has_tokenizer_json(folder(donor).dir())) {
		plan_.warnings.push_back(fmt::format("model '{}' has no tokenizer.json: its tokenizer files are copied and "
		                                     "the embedding rows are not matched by token",
		                                     ref(donor)));
		return;
	}
	for (size_t m = 0; m < plan_.models.size(); m++)
		vocabulary_models_.push_back({ref(m), folder(m).dir(), embedding_rows(m), m < merged});
	vocabulary_ = build_vocabulary(*spec, vocabulary_models_, base, donor);
	for (auto& warning : vocabulary_->warnings)
		plan_.warnings.push_back(std::move(warning));
	auto chat_template = std::move(plan_.tokenizer.chat_template);
	plan_.tokenizer = vocabulary_->output;
	plan_.tokenizer.chat_template = std::move(chat_template);
}

// Every source of an embedding-like tensor must have as many rows as its embedding matrix (the
// rows its tokenizer's ids index) and the same width; the job then has the output vocabulary's rows.
void Planner::remap_vocab_rows(TensorJob& job, const std::string& out_name) {
	const uint64_t cols = job.shape[1];
	std::vector<size_t> models;
	for (const auto& source : job.sources) {
		const auto& shape = source.tensor->info->shape;
		const int64_t rows = vocabulary_models_[source.model].rows;
		if (shape.size() != 2 || shape[1] != cols || static_cast<int64_t>(shape[0]) != rows)
			throw Error(
			    fmt::format("tensor '{}' of model '{}' has shape {}; with a tokenizer setting it needs [{}, {}] "
			                "(the rows of the model's embedding matrix, the width of the other models')",
			                source.tensor->info->name, ref(source.model), shape_string(shape), rows, cols));
		models.push_back(source.model);
	}
	const int base = job.base_index;
	auto& remap = remaps_[{models, base}];
	if (!remap)
		remap = std::make_shared<const RowRemap>(
		    make_row_remap(*vocabulary_, *recipe_.tokenizer, models, base, vocabulary_models_, out_name));
	job.rows = remap;
	job.shape = {vocabulary_->rows, cols};
}

} // namespace

uint64_t TensorJob::numel() const {
	uint64_t n = 1;
	for (auto d : shape)
		n *= d;
	return n;
}

bool TensorJob::is_plain_copy(const MergeMethod& method) const {
	return method.info().copy_only && sources.size() == 1 && !rows && !source_params[0].contains("scale") &&
	       sources[0].tensor->info->dtype == out_dtype;
}

uint64_t Plan::input_bytes() const {
	uint64_t total = 0;
	for (const auto& job : jobs)
		for (const auto& s : job.sources)
			total += s.numel * dtype_size(s.tensor->info->dtype);
	return total;
}

uint64_t Plan::output_bytes() const {
	uint64_t total = 0;
	for (const auto& job : jobs)
		total += job.out_nbytes();
	return total;
}

MergeInput job_input(const Plan& plan, const TensorJob& job) {
	MergeInput input;
	input.tensor_name = job.name;
	input.shape = job.shape;
	input.base_index = job.base_index;
	input.params = job.params;
	input.source_params = job.source_params;
	input.random_seed = plan.seed;
	return input;
}

Plan build_plan(Recipe recipe, uint64_t seed, const ComputedStatistics& computed,
                const std::filesystem::path& lora_scratch) {
	Plan plan;
	plan.method = find_method(recipe.merge_method);
	if (!plan.method) {
		std::vector<std::string> names;
		for (const auto* m : all_methods())
			names.push_back(m->info().name);
		throw Error(fmt::format("recipe: merge_method: unknown method '{}' (valid: {})", recipe.merge_method,
		                        fmt::join(names, ", ")));
	}
	plan.recipe = std::move(recipe);
	plan.seed = seed;
	Planner(plan, computed, lora_scratch).run();
	return plan;
}

std::string describe_plan(const Plan& plan) {
	std::string out = fmt::format("method: {}\n", plan.method->info().name);
	for (size_t i = 0; i < plan.models.size(); i++)
		out += fmt::format("model {}: {} -> {}{}\n", i, plan.models[i].reference, plan.models[i].folder->dir().string(),
		                   static_cast<int>(i) == plan.base_model ? " (base)" : "");
	for (const auto& w : plan.warnings)
		out += fmt::format("warning: {}\n", w);
	out += fmt::format("{} output tensors, {:.3f} GB in, {:.3f} GB out\n", plan.jobs.size(),
	                   static_cast<double>(plan.input_bytes()) / 1e9, static_cast<double>(plan.output_bytes()) / 1e9);
	for (const auto& job : plan.jobs) {
		out += fmt::format("{} {} {}", job.name, shape_string(job.shape), dtype_safetensors_name(job.out_dtype));
		if (job.rows) out += " (rows by token of the output vocabulary)";
		for (const auto& [key, value] : job.params)
			out += fmt::format(" {}={:g}", key, value);
		out += "\n";
		for (size_t s = 0; s < job.sources.size(); s++) {
			const auto& source = job.sources[s];
			out += fmt::format("  <- {}:{}{}", plan.models[source.model].reference, source.tensor->info->name,
			                   static_cast<int>(s) == job.base_index ? " (base)" : "");
			for (const auto& [key, value] : job.source_params[s])
				out += fmt::format(" {}={:g}", key, value);
			out += "\n";
		}
	}
	return out;
}

bool learns_from_data(const MethodInfo& info, const Recipe& recipe) {
	if (info.learned) return true;
	if (info.learned_when.first.empty()) return false;
	const auto value = text_setting(recipe.parameters, info.learned_when.first, "parameters");
	return value == info.learned_when.second;
}

} // namespace weld
