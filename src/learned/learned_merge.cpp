#include "learned/learned_merge.h"

#include "exec/merge.h"
#include "io/model.h"
#include "io/output_folder.h"
#include "learned/adamerging.h"
#include "learned/concrete.h"
#include "learned/dam.h"
#include "learned/expert_merging.h"
#include "learned/fw_merging.h"
#include "learned/localize_stitch.h"
#include "learned/regmean_pp.h"
#include "learned/twin.h"
#include "learned/zipit.h"
#include "methods/method.h"
#include "nn/tokenizer.h"
#include "plan/plan.h"
#include "plan/recipe.h"
#include "stats/statistics.h"
#include "util/error.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/serialize.h>

#include <algorithm>
#include <cstdio>

namespace weld::learned {
namespace fs = std::filesystem;

namespace {

// The recipe-level settings of a learned method: Text values as written, Numbers checked
// against their definitions; one value each (no gradients or per-tensor rules).
class Settings {
public:
	Settings(const Recipe& recipe, const MethodInfo& info) : recipe_(recipe), info_(info) {
		for (const auto& warning : check_parameter_names(info, recipe))
			std::fprintf(stderr, "weld: warning: %s\n", warning.c_str());
	}
	std::string text(const std::string& name, const std::string& fallback = "") const {
		const auto value = text_setting(recipe_.parameters, name, "parameters");
		if (!value && def(name)->required)
			throw Error(fmt::format("recipe: method '{}' needs parameter '{}'", info_.name, name));
		return value.value_or(fallback);
	}
	// A text parameter that must be one of `valid` (the first is the default).
	std::string choice(const std::string& name, const std::vector<std::string>& valid) const {
		const auto value = text(name, valid.front());
		if (std::find(valid.begin(), valid.end(), value) == valid.end())
			throw Error(fmt::format("recipe: parameters.{} is '{}'; valid: {}", name, value, fmt::join(valid, ", ")));
		return value;
	}
	double number(const std::string& name) const {
		const auto* d = def(name);
		const auto* s = find_setting(recipe_.parameters, name);
		if (!s) return d->default_value;
		if (s->kind != ParamSetting::Kind::Number)
			throw Error(fmt::format("recipe: parameters.{}: expected one number", name));
		if (s->number < d->min_value || s->number > d->max_value || (d->min_exclusive && s->number == d->min_value))
			throw Error(fmt::format("recipe: parameters.{} is {:g}, outside {}{:g}, {:g}]", name, s->number,
			                        d->min_exclusive ? "(" : "[", d->min_value, d->max_value));
		return s->number;
	}

	// A true/false parameter (a number: 0 is false).
	bool flag(const std::string& name) const {
		const auto* s = find_setting(recipe_.parameters, name);
		if (!s) return def(name)->default_value != 0;
		if (s->kind != ParamSetting::Kind::Bool && s->kind != ParamSetting::Kind::Number)
			throw Error(fmt::format("recipe: parameters.{}: expected true or false", name));
		return s->number != 0;
	}

	// A per-model number: as the model's parameters set it, else its default.
	double model_number(const SourceSpec& model, const std::string& name) const {
		const auto* s = find_setting(model.parameters, name);
		if (!s) {
			for (const auto& d : info_.model_params)
				if (d.name == name) return d.default_value;
			return 0;
		}
		if (s->kind != ParamSetting::Kind::Number)
			throw Error(fmt::format("recipe: models: '{}': {}: expected one number", model.model, name));
		return s->number;
	}

private:
	const ParamDef* def(const std::string& name) const {
		for (const auto& d : info_.global_params)
			if (d.name == name) return &d;
		return nullptr;
	}
	const Recipe& recipe_;
	const MethodInfo& info_;
};

std::string quoted(const std::string& text) {
	return nlohmann::json(text).dump(); // a JSON string is a YAML double-quoted scalar
}

// task_arithmetic with the learned λ: one weight per model, or filter rules per tensor (longest
// names first, so that no name's rule catches a longer name that contains it).
std::string coefficients_recipe(const Recipe& recipe, const std::vector<std::string>& experts,
                                const std::vector<std::string>& names, const at::Tensor& lambda,
                                const std::string& provenance) {
	std::string out = "# " + provenance + "\n# Rerun without data: weld merge this recipe.\n";
	out += "merge_method: task_arithmetic\nbase_model: " + quoted(*recipe.base_model) + "\n";
	if (recipe.dtype) out += fmt::format("dtype: {}\n", dtype_torch_name(*recipe.dtype));
	if (recipe.out_dtype) out += fmt::format("out_dtype: {}\n", dtype_torch_name(*recipe.out_dtype));
	if (recipe.tokenizer_source) out += "tokenizer_source: " + quoted(*recipe.tokenizer_source) + "\n";
	out += "parameters: {normalize: false, lambda: 1}\nmodels:\n";
	const auto table = lambda.to(at::kDouble).contiguous();
	std::vector<size_t> order(names.size());
	for (size_t i = 0; i < order.size(); ++i)
		order[i] = i;
	std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return names[a].size() > names[b].size(); });
	for (size_t k = 0; k < experts.size(); ++k) {
		out += "  - model: " + quoted(experts[k]) + "\n    parameters:\n";
		const auto row = table[static_cast<int64_t>(k)];
		if (row.size(0) == 1) {
			out += fmt::format("      weight: {:.9g}\n", row[0].item<double>());
			continue;
		}
		out += "      weight:\n";
		for (size_t i : order)
			out += fmt::format("        - {{filter: {}, value: {:.9g}}}\n", quoted(names[i]),
			                   row[static_cast<int64_t>(i)].item<double>());
	}
	return out;
}

struct Learned {
	at::Tensor coefficients;
	std::string settings; // for the output recipe's provenance line
};

Learned learn_adamerging(const Settings& settings, TaskVectorModel& tv, const fs::path& data, const fs::path& base_dir,
                         bool quiet, uint64_t seed) {
	const auto prompts = read_prompts(data, tv.model(), base_dir);
	AdaMergingOptions o;
	const auto granularity = settings.choice("granularity", {"layer", "task"});
	o.layer_wise = granularity == "layer";
	o.steps = static_cast<int64_t>(settings.number("steps"));
	o.lr = settings.number("lr");
	o.lambda_init = settings.number("lambda_init");
	o.batch = static_cast<int64_t>(settings.number("batch"));
	o.seed = seed;
	auto lambda = learn_adamerging(tv, prompts, o, [&](const AdaMergingStep& s) {
		if (!quiet && ((s.step + 1) % 10 == 0 || s.step + 1 == o.steps))
			std::fprintf(stderr, "weld: adamerging step %lld/%lld entropy %.4f\n", static_cast<long long>(s.step + 1),
			             static_cast<long long>(o.steps), s.entropy);
	});
	return {lambda, fmt::format("granularity {}, {} steps, lr {:g}, lambda_init {:g}, batch {}; unlabeled prompts",
	                            granularity, o.steps, o.lr, o.lambda_init, o.batch)};
}

Learned learn_fw(const Settings& settings, TaskVectorModel& tv, const fs::path& data, const fs::path& base_dir,
                 bool quiet) {
	const auto& config = tv.model().config();
	const auto proxy = nn::read_sequences(data, config.vocab_size, config.max_position_embeddings, base_dir.string());
	FwOptions o;
	const auto variant = settings.choice("variant", {"hard", "soft"});
	o.soft = variant == "soft";
	o.steps = static_cast<int64_t>(settings.number("steps"));
	o.step_size = settings.number("step_size");
	o.scaling = settings.number("scaling");
	auto c = learn_fw_merging(tv, proxy, o, [&](const FwStep& s) {
		if (quiet) return;
		std::vector<int> picks(tv.experts() + 2, 0);
		for (auto i : s.chosen)
			picks[static_cast<size_t>(i + 2)]++;
		std::string counts = fmt::format("stay {}, base {}", picks[0], picks[1]);
		for (size_t k = 2; k < picks.size(); ++k)
			counts += fmt::format(", model {} {}", k - 2, picks[k]);
		std::fprintf(stderr, "weld: fw_merging step %lld/%lld loss %.4f; tensors moved toward: %s\n",
		             static_cast<long long>(s.step + 1), static_cast<long long>(o.steps), s.loss, counts.c_str());
	});
	return {c, fmt::format("variant {}, {} steps, step_size {:g}, scaling {:g}; labeled proxy data", variant, o.steps,
	                       o.step_size, o.scaling)};
}

} // namespace

// RegMean++ writes the merged model itself (its result is no task_arithmetic recipe).
std::string run_regmean_pp(const Recipe& recipe, const Settings& settings, const LearnedMergeOptions& options) {
	std::vector<nn::LlamaModel> models;
	std::vector<std::vector<nn::TrainingSequence>> data;
	std::string provenance;
	for (const auto& m : recipe.models) {
		const auto where = fmt::format("model '{}'", m.model);
		const auto file = text_setting(m.parameters, "data", where);
		if (!file) throw Error(fmt::format("recipe: {}: method 'regmean_pp' needs its data: file", where));
		const auto dir = resolve_model_reference(m.model);
		models.push_back(nn::LlamaModel::load(dir, at::kFloat));
		const auto& c = models.back().config();
		data.push_back(nn::read_sequences(*file, c.vocab_size, c.max_position_embeddings, dir.string()));
		provenance += fmt::format("# {}: {} (sha256 {})\n", m.model, *file, stats::file_sha256(*file));
	}
	auto merged = nn::LlamaModel::load(resolve_model_reference(recipe.models[0].model), at::kFloat);
	std::vector<const nn::LlamaModel*> pointers;
	for (const auto& m : models)
		pointers.push_back(&m);
	regmean_pp(pointers, data, settings.number("alpha"), merged);
	OutputFolder out(options.out, options.force);
	merged.save(out.path());
	const auto text = "# Merged by weld's regmean_pp on these data files:\n" + provenance + recipe.text;
	write_text_file(out.path() / "weld_recipe.yml", text);
	out.publish();
	return text;
}

// The learned coefficients [experts, 1 or tensors] as a task_arithmetic recipe, merged by the
// ordinary engine: the output's weld_recipe.yml reruns without data.
std::string merge_coefficients(const Recipe& recipe, const std::vector<std::string>& experts, const TaskVectorModel& tv,
                               const at::Tensor& coefficients, const std::string& provenance,
                               const LearnedMergeOptions& options) {
	const auto text = coefficients_recipe(recipe, experts, tv.names(), coefficients, provenance);
	MergeOptions merge;
	merge.recipe_path = options.recipe;
	merge.recipe_text = text;
	merge.out_dir = options.out;
	merge.force = options.force;
	merge.seed = options.seed;
	merge.exec.threads = std::max(1u, options.threads);
	run_merge(merge);
	return text;
}

// The per-model data: file of every listed model other than the base (one per model, in order).
std::vector<fs::path> model_data_files(const Recipe& recipe, const std::vector<std::string>& experts,
                                       const std::string& method) {
	std::vector<fs::path> files;
	for (const auto& name : experts)
		for (const auto& m : recipe.models)
			if (m.model == name) {
				const auto where = fmt::format("model '{}'", m.model);
				const auto file = text_setting(m.parameters, "data", where);
				if (!file) throw Error(fmt::format("recipe: {}: method '{}' needs its data: file", where, method));
				files.emplace_back(*file);
				break;
			}
	return files;
}

std::string data_provenance(const std::vector<std::string>& experts, const std::vector<fs::path>& files) {
	std::string out;
	for (size_t k = 0; k < files.size(); ++k)
		out += fmt::format("# {}: {} (sha256 {})\n", experts[k], files[k].string(), stats::file_sha256(files[k]));
	return out;
}

// A merge that ends as weights (masks, chunks: no task_arithmetic recipe holds it): tv's model is
// written, with the recipe and its provenance as weld_recipe.yml.
std::string write_learned_model(TaskVectorModel& tv, const Recipe& recipe, const std::string& provenance,
                                const LearnedMergeOptions& options) {
	OutputFolder out(options.out, options.force);
	tv.model().save(out.path());
	const auto text = provenance + recipe.text;
	write_text_file(out.path() / "weld_recipe.yml", text);
	out.publish();
	return text;
}

// dam: learns the masks from the clean `data` and writes the merged model, the per-weight
// coefficients m̂ ⊙ (1 − b) as dam_masks.pt and, as weld_recipe.yml, a dam recipe that merges from
// that file (`masks`) without data; or, given `masks`, merges from them.
std::string run_dam(const Recipe& recipe, const Settings& settings, TaskVectorModel& tv,
                    const std::vector<std::string>& experts, const std::string& header,
                    const LearnedMergeOptions& options) {
	const double lambda = settings.number("lambda");
	if (const fs::path masks = settings.text("masks"); !masks.empty()) {
		if (!fs::is_regular_file(masks)) throw Error(fmt::format("{}: no such file", masks.string()));
		std::vector<at::Tensor> coefficients;
		try {
			torch::load(coefficients, masks.string());
		} catch (const c10::Error&) {
			throw Error(fmt::format("{}: not a dam masks file", masks.string()));
		}
		apply_dam_coefficients(tv, coefficients, lambda, masks.string());
		return write_learned_model(tv, recipe,
		                           fmt::format("# Merged by weld's dam from the masks in {} (sha256 {})\n",
		                                       masks.string(), stats::file_sha256(masks)),
		                           options);
	}
	const fs::path data = settings.text("data");
	if (data.empty()) throw Error("recipe: method 'dam' needs parameter 'data' (or the masks: of an earlier merge)");
	DamOptions o;
	o.sample_final = settings.choice("final_mask", {"median", "sample"}) == "sample";
	o.lambda = lambda;
	o.temperature = settings.number("temperature");
	o.steps = static_cast<int64_t>(settings.number("steps"));
	o.lr = settings.number("lr");
	o.backdoor_lr = settings.number("backdoor_lr");
	o.batch = static_cast<int64_t>(settings.number("batch"));
	o.alpha = settings.number("alpha");
	o.backdoor_init = settings.number("backdoor_init");
	o.seed = options.seed;
	const auto base_dir = resolve_model_reference(*recipe.base_model);
	const auto prompts = read_prompts(data, tv.model(), base_dir);
	if (nn::detect_data_kind(data) != nn::DataKind::PromptAnswer)
		throw Error(fmt::format("{}: method 'dam' needs a labeled clean set (prompt/answer JSONL)", data.string()));
	const auto& c = tv.model().config();
	const auto examples = nn::read_sequences(data, c.vocab_size, c.max_position_embeddings, base_dir.string());
	if (examples.size() < static_cast<size_t>(o.batch))
		throw Error(fmt::format("{}: {} labeled examples, too few for parameters.batch {}", data.string(),
		                        examples.size(), o.batch));
	const auto result = learn_dam(tv, prompts, examples, o, [&](const DamStep& s) {
		if (!options.quiet && ((s.step + 1) % 10 == 0 || s.step + 1 == o.steps))
			std::fprintf(stderr, "weld: dam step %lld/%lld entropy %.4f, clean loss %.4f, mean backdoor mask %.4f\n",
			             static_cast<long long>(s.step + 1), static_cast<long long>(o.steps), s.entropy, s.loss,
			             s.removed);
	});
	const auto masks_path = options.out / "dam_masks.pt";
	std::string text =
	    header +
	    fmt::format(" ({} steps, lr {:g}, backdoor_lr {:g}, temperature {:g}, λ {:g}, alpha {:g}, backdoor_init {:g}, "
	                "final_mask {}, seed {}; final shared mask above 1/2 on {:.4f} of the weights, backdoor mask on "
	                "{:.4f}) on {} (sha256 {}).\n# Rerun without data: weld merge this recipe (it reads {}).\n",
	                o.steps, o.lr, o.backdoor_lr, o.temperature, o.lambda, o.alpha, o.backdoor_init,
	                o.sample_final ? "sample" : "median", o.seed, result.kept, result.removed, data.filename().string(),
	                stats::file_sha256(data), masks_path.string());
	text += "merge_method: dam\nbase_model: " + quoted(*recipe.base_model) + "\n";
	text += fmt::format("parameters: {{lambda: {:.17g}, masks: {}}}\nmodels:\n", o.lambda, quoted(masks_path.string()));
	for (const auto& e : experts)
		text += "  - model: " + quoted(e) + "\n";
	OutputFolder out(options.out, options.force);
	tv.model().save(out.path());
	torch::save(result.coefficients, (out.path() / "dam_masks.pt").string());
	write_text_file(out.path() / "weld_recipe.yml", text);
	out.publish();
	return text;
}

std::string run_learned_merge(const LearnedMergeOptions& options) {
	const auto label = options.recipe.string();
	const Recipe recipe = parse_recipe(read_text_file(options.recipe), label);
	const MergeMethod* method = find_method(recipe.merge_method);
	if (!method || !learns_from_data(method->info(), recipe))
		throw Error(fmt::format("recipe: merge_method '{}' does not learn from data", recipe.merge_method));
	const auto& info = method->info();
	if (recipe.models.empty())
		throw Error(fmt::format("recipe: method '{}' takes models:, not slices: or modules:", info.name));
	if (fs::exists(options.out) && !options.force)
		throw Error(fmt::format("{}: already exists (use --force to replace it)", options.out.string()));
	// One thread: what is learned, and so the merged bytes, do not depend on --threads.
	at::set_num_threads(1);
	if (info.name == "regmean_pp") return run_regmean_pp(recipe, Settings(recipe, info), options);
	if (info.name == "twin") {
		const Settings s(recipe, info);
		return run_twin(recipe, s.number("lambda"), s.number("density"), s.number("router_lr"),
		                static_cast<int64_t>(s.number("router_epochs")), options.seed, options.out, options.force,
		                options.quiet);
	}
	if (info.name == "zipit") {
		const Settings s(recipe, info);
		ZipitOptions z;
		z.data = s.text("data");
		z.absval = s.flag("absval");
		z.samples = static_cast<size_t>(s.number("samples"));
		for (const auto& m : recipe.models)
			z.weights.push_back(s.model_number(m, "weight"));
		return run_zipit(recipe, z, options);
	}
	if (!recipe.base_model) throw Error(fmt::format("recipe: method '{}' needs a base_model", info.name));
	const Settings settings(recipe, info);

	std::vector<std::string> experts;
	std::vector<fs::path> expert_dirs;
	for (const auto& m : recipe.models)
		if (m.model != *recipe.base_model && std::find(experts.begin(), experts.end(), m.model) == experts.end()) {
			experts.push_back(m.model);
			expert_dirs.push_back(resolve_model_reference(m.model));
		}
	const auto base_dir = resolve_model_reference(*recipe.base_model);
	TaskVectorModel tv(base_dir, expert_dirs, at::kFloat);
	const std::string header = fmt::format("# Learned by weld's {} from {}", info.name, label);

	if (info.name == "localize_stitch") {
		const auto files = model_data_files(recipe, experts, info.name);
		LocalizeOptions o;
		o.steps = static_cast<int64_t>(settings.number("steps"));
		o.lr = settings.number("lr");
		o.l1 = settings.number("l1");
		o.sigmoid_bias = settings.number("sigmoid_bias");
		std::vector<std::vector<at::Tensor>> masks;
		for (size_t k = 0; k < experts.size(); ++k) {
			for (const auto& m : recipe.models)
				if (m.model == experts[k]) o.density = settings.model_number(m, "density");
			const auto& c = tv.model().config();
			const auto examples =
			    nn::read_sequences(files[k], c.vocab_size, c.max_position_embeddings, base_dir.string());
			masks.push_back(learn_localize_mask(tv, k, examples, o, [&](const LocalizeStep& s) {
				if (!options.quiet && (s.step + 1 == o.steps))
					std::fprintf(stderr, "weld: localize_stitch model %zu/%zu: loss %.4f, mask keeps %.4f\n",
					             s.expert + 1, experts.size(), s.loss, s.kept);
			}));
		}
		stitch(tv, masks);
		return write_learned_model(
		    tv, recipe,
		    header +
		        fmt::format(" (mode learned, {} steps, lr {:g}, l1 {:g}, sigmoid_bias {:g}) on:\n", o.steps, o.lr, o.l1,
		                    o.sigmoid_bias) +
		        data_provenance(experts, files),
		    options);
	}
	if (info.name == "concrete") {
		const fs::path data = settings.text("data");
		ConcreteOptions o;
		const auto variant = settings.choice("variant", {"task_arithmetic", "adamerging"});
		o.adamerging = variant == "adamerging";
		o.lambda = settings.number("lambda");
		o.temperature = settings.number("temperature");
		o.steps = static_cast<int64_t>(settings.number("steps"));
		o.lr = settings.number("lr");
		o.batch = static_cast<int64_t>(settings.number("batch"));
		o.seed = options.seed;
		o.ada.lambda_init = o.lambda;
		o.ada.seed = options.seed;
		const auto prompts = read_prompts(data, tv.model(), base_dir);
		const double kept = learn_concrete(tv, prompts, o, [&](const ConcreteStep& s) {
			if (!options.quiet && ((s.step + 1) % 10 == 0 || s.step + 1 == o.steps))
				std::fprintf(stderr, "weld: concrete step %lld/%lld entropy %.4f, mean mask probability %.4f\n",
				             static_cast<long long>(s.step + 1), static_cast<long long>(o.steps), s.entropy,
				             s.mean_keep);
		});
		return write_learned_model(
		    tv, recipe,
		    header + fmt::format(" (variant {}, {} steps, lr {:g}, temperature {:g}, λ {:g}, seed {}; final mask "
		                         "above 1/2 on {:.4f} of the weights) on {} (sha256 {})\n",
		                         variant, o.steps, o.lr, o.temperature, o.lambda, o.seed, kept,
		                         data.filename().string(), stats::file_sha256(data)),
		    options);
	}
	if (info.name == "dam") return run_dam(recipe, settings, tv, experts, header, options);
	if (info.name == "expert_merging") {
		const auto files = model_data_files(recipe, experts, info.name);
		ExpertMergingOptions o;
		const auto variant = settings.choice("variant", {"standard", "plus"});
		o.plus = variant == "plus";
		o.lambda_init = settings.number("lambda_init");
		o.steps = static_cast<int64_t>(settings.number("steps"));
		o.lr = settings.number("lr");
		o.batch = static_cast<int64_t>(settings.number("batch"));
		o.temperature = settings.number("temperature");
		o.hidden_weight = settings.number("hidden_weight");
		o.regularization = settings.number("regularization");
		o.chunks = settings.number("chunks");
		o.seed = options.seed;
		std::vector<std::vector<std::vector<int64_t>>> prompts;
		for (const auto& f : files)
			prompts.push_back(read_prompts(f, tv.model(), base_dir));
		const auto result = learn_expert_merging(tv, prompts, o, [&](const ExpertMergingStep& s) {
			if (!options.quiet && ((s.step + 1) % 10 == 0 || s.step + 1 == o.steps))
				std::fprintf(stderr, "weld: expert_merging stage %d step %lld/%lld loss %.5f\n", s.stage,
				             static_cast<long long>(s.step + 1), static_cast<long long>(o.steps), s.loss);
		});
		const auto settings_line = fmt::format(
		    "variant {}, {} steps, lr {:g}, lambda_init {:g}, temperature {:g}, hidden_weight {:g}, regularization "
		    "{:g}, chunks {:g}, seed {}",
		    variant, o.steps, o.lr, o.lambda_init, o.temperature, o.hidden_weight, o.regularization, o.chunks, o.seed);
		if (result.chunked)
			return write_learned_model(
			    tv, recipe, header + " (" + settings_line + ") on:\n" + data_provenance(experts, files), options);
		std::vector<at::Tensor> columns;
		for (const auto& a : result.alpha)
			columns.push_back(a);
		return merge_coefficients(recipe, experts, tv, at::cat(columns, 1),
		                          fmt::format("Learned by weld's expert_merging from {} ({}) on per-model data:\n{}",
		                                      label, settings_line, data_provenance(experts, files)),
		                          options);
	}
	const fs::path data = settings.text("data");
	const auto learned = info.name == "fw_merging"
	                         ? learn_fw(settings, tv, data, base_dir, options.quiet)
	                         : learn_adamerging(settings, tv, data, base_dir, options.quiet, options.seed);
	const auto provenance = fmt::format("Learned by weld's {} from {} ({}) on {} (sha256 {}).", info.name, label,
	                                    learned.settings, data.filename().string(), stats::file_sha256(data));
	return merge_coefficients(recipe, experts, tv, learned.coefficients, provenance, options);
}

} // namespace weld::learned
