#include "search/spec.h"

#include "methods/method.h"
#include "nn/tasks.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <set>

namespace weld::search {
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kAlgorithms = {"cma_es", "m2n2", "map", "bayes_mo", "sweep"};

class Reader {
public:
	explicit Reader(std::string label) : label_(std::move(label)) {}
	[[noreturn]] void fail(const std::string& field, const std::string& what) const {
		throw Error(fmt::format("{}: {}: {}", label_, field, what));
	}
	void keys(const YAML::Node& node, const std::string& field, const std::set<std::string>& allowed) const {
		if (!node.IsMap()) fail(field, "expected a mapping");
		for (const auto& kv : node) {
			const auto key = kv.first.as<std::string>();
			if (!allowed.count(key)) fail(field, fmt::format("unknown key '{}'", key));
		}
	}
	std::string text(const YAML::Node& node, const std::string& field) const {
		if (!node.IsScalar() || node.Scalar().empty()) fail(field, "expected a text value");
		return node.Scalar();
	}
	double number(const YAML::Node& node, const std::string& field) const {
		double value = 0;
		if (!node.IsScalar() || !YAML::convert<double>::decode(node, value) || !std::isfinite(value))
			fail(field, "expected a number");
		return value;
	}
	uint64_t count(const YAML::Node& node, const std::string& field) const {
		const double value = number(node, field);
		if (value < 0 || value != std::floor(value) || value > 1e15) fail(field, "expected a whole number >= 0");
		return static_cast<uint64_t>(value);
	}

private:
	std::string label_;
};

const ParamDef* find_param(const std::vector<ParamDef>& defs, const std::string& name) {
	for (const auto& d : defs)
		if (d.name == name) return &d;
	return nullptr;
}

void parse_search(const Reader& r, const YAML::Node& node, const MethodInfo& info, SearchSpec& spec) {
	if (!node || !node.IsMap() || node.size() == 0) r.fail("search", "give at least one parameter and its range");
	for (const auto& kv : node) {
		Range range;
		range.name = kv.first.as<std::string>();
		const auto field = "search." + range.name;
		r.keys(kv.second, field, {"min", "max", "per"});
		if (!kv.second["min"] || !kv.second["max"]) r.fail(field, "needs min and max");
		range.min = r.number(kv.second["min"], field + ".min");
		range.max = r.number(kv.second["max"], field + ".max");
		if (!(range.min < range.max))
			r.fail(field, fmt::format("the range [{:g}, {:g}] is empty or inverted: min must be below max", range.min,
			                          range.max));
		const auto per = kv.second["per"] ? r.text(kv.second["per"], field + ".per") : "global";
		if (per != "global" && per != "model") r.fail(field + ".per", fmt::format("'{}': valid: global, model", per));
		range.per_model = per == "model";
		const auto& defs = range.per_model ? info.model_params : info.global_params;
		const auto* def = find_param(defs, range.name);
		if (!def || def->type != ParamType::Number)
			r.fail(field, fmt::format("method '{}' has no {} number parameter '{}'", info.name,
			                          range.per_model ? "per-model" : "global", range.name));
		if (range.min < def->min_value || range.max > def->max_value)
			r.fail(field, fmt::format("method '{}' takes {} in [{:g}, {:g}]", info.name, range.name, def->min_value,
			                          def->max_value));
		spec.searched.push_back(range);
	}
}

void parse_fitness(const Reader& r, const YAML::Node& node, SearchSpec& spec) {
	if (!node) r.fail("fitness", "missing: give tasks or files");
	r.keys(node, "fitness", {"tasks", "files", "held_out", "task_seed"});
	if (const auto& tasks = node["tasks"]) {
		std::vector<std::string> names;
		if (tasks.IsSequence()) {
			for (const auto& t : tasks)
				spec.measures.push_back({r.text(t, "fitness.tasks"), true, 1});
		} else if (tasks.IsMap()) {
			for (const auto& kv : tasks)
				spec.measures.push_back({kv.first.as<std::string>(), true,
				                         r.number(kv.second, "fitness.tasks." + kv.first.as<std::string>())});
		} else {
			r.fail("fitness.tasks", "expected a list of task names or {task: weight}");
		}
		for (const auto& m : spec.measures)
			names.push_back(m.name);
		try {
			tasks::find_tasks(names);
		} catch (const Error& e) {
			r.fail("fitness.tasks", e.what());
		}
	}
	if (const auto& files = node["files"]) {
		if (!files.IsSequence()) r.fail("fitness.files", "expected a list of {data: FILE, weight: W}");
		for (const auto& f : files) {
			r.keys(f, "fitness.files", {"data", "weight"});
			const auto path = r.text(f["data"], "fitness.files.data");
			if (!fs::is_regular_file(path)) r.fail("fitness.files", fmt::format("{}: no such file", path));
			spec.measures.push_back({path, false, f["weight"] ? r.number(f["weight"], "fitness.files.weight") : 1});
		}
	}
	if (spec.measures.empty()) r.fail("fitness", "give tasks or files to measure");
	double total = 0;
	for (const auto& m : spec.measures) {
		if (m.weight < 0) r.fail("fitness", fmt::format("'{}' has a negative weight", m.name));
		total += m.weight;
	}
	if (!(total > 0)) r.fail("fitness", "the weights sum to 0");
	if (node["held_out"]) spec.held_out = r.count(node["held_out"], "fitness.held_out");
	if (spec.held_out == 0) r.fail("fitness.held_out", "must be positive");
	if (node["task_seed"]) spec.task_seed = r.count(node["task_seed"], "fitness.task_seed");
}

std::string yaml_scalar(const YAML::Node& node) {
	double value = 0;
	if (YAML::convert<double>::decode(node, value)) return node.Scalar();
	return nlohmann::json(node.Scalar()).dump(); // a JSON string is a YAML double-quoted scalar
}

} // namespace

std::vector<Gene> SearchSpec::genes() const {
	std::vector<Gene> out;
	for (const auto& r : searched) {
		if (!r.per_model) {
			out.push_back({r.name, -1, 0, r.min, r.max});
			continue;
		}
		for (size_t m = 0; m < models.size(); ++m)
			for (int g = 0; g < layer_groups; ++g)
				out.push_back({r.name, static_cast<int>(m), g, r.min, r.max});
	}
	return out;
}

std::string SearchSpec::recipe(const std::vector<double>& genome) const {
	const auto all = genes();
	if (genome.size() != all.size()) throw Error("search: a genome of the wrong length");
	auto value = [&](size_t i) { return all[i].min + std::clamp(genome[i], 0.0, 1.0) * (all[i].max - all[i].min); };
	std::string out = "merge_method: " + method + "\n";
	if (base_model) out += "base_model: " + nlohmann::json(*base_model).dump() + "\n";
	std::string global;
	for (const auto& [name, scalar] : fixed)
		global += fmt::format("{}{}: {}", global.empty() ? "" : ", ", name, scalar);
	for (size_t i = 0; i < all.size(); ++i)
		if (all[i].model < 0) global += fmt::format("{}{}: {:.9g}", global.empty() ? "" : ", ", all[i].param, value(i));
	if (!global.empty()) out += "parameters: {" + global + "}\n";
	out += "models:\n";
	for (size_t m = 0; m < models.size(); ++m) {
		out += "  - model: " + nlohmann::json(models[m]).dump() + "\n";
		std::string own;
		for (const auto& [name, scalar] : model_fixed)
			own += fmt::format("{}{}: {}", own.empty() ? "" : ", ", name, scalar);
		for (const auto& r : searched) {
			if (!r.per_model) continue;
			std::vector<std::string> groups;
			for (size_t i = 0; i < all.size(); ++i)
				if (all[i].param == r.name && all[i].model == static_cast<int>(m))
					groups.push_back(fmt::format("{:.9g}", value(i)));
			const auto joined = groups.size() == 1 ? groups[0] : fmt::format("[{}]", fmt::join(groups, ", "));
			own += fmt::format("{}{}: {}", own.empty() ? "" : ", ", r.name, joined);
		}
		if (!own.empty()) out += "    parameters: {" + own + "}\n";
	}
	out += "dtype: float32\n";
	return out;
}

double SearchSpec::fitness(const std::vector<double>& objectives) const {
	double sum = 0, total = 0;
	for (size_t i = 0; i < measures.size(); ++i) {
		sum += measures[i].weight * objectives[i];
		total += measures[i].weight;
	}
	return sum / total;
}

SearchSpec parse_search_spec(const std::string& yaml_text, const std::string& label) {
	const Reader r(label);
	YAML::Node root;
	try {
		root = YAML::Load(yaml_text);
	} catch (const YAML::Exception& e) {
		throw Error(fmt::format("{}: not valid YAML: {}", label, e.what()));
	}
	if (!root.IsMap()) throw Error(fmt::format("{}: expected a mapping of method, models, search, ...", label));
	r.keys(root, "spec",
	       {"method", "base_model", "models", "parameters", "model_parameters", "search", "layer_groups", "algorithm",
	        "fitness", "budget", "seed"});
	SearchSpec spec;
	spec.label = label;
	if (!root["method"]) r.fail("method", "missing");
	spec.method = r.text(root["method"], "method");
	const MergeMethod* method = find_method(spec.method);
	if (!method) r.fail("method", fmt::format("unknown merge method '{}'", spec.method));
	const auto& info = method->info();
	if (info.learned || !info.statistics.empty())
		r.fail("method", fmt::format("'{}' learns from data itself; search a data-free method", spec.method));
	if (root["base_model"]) spec.base_model = r.text(root["base_model"], "base_model");
	if (!root["models"] || !root["models"].IsSequence() || root["models"].size() == 0)
		r.fail("models", "expected a list of the models merged");
	for (const auto& m : root["models"])
		spec.models.push_back(r.text(m, "models"));
	parse_search(r, root["search"], info, spec);
	for (const bool per_model : {false, true}) {
		const std::string key = per_model ? "model_parameters" : "parameters";
		const auto& fixed = root[key];
		if (!fixed) continue;
		if (!fixed.IsMap()) r.fail(key, "expected a mapping of the method's fixed parameters");
		for (const auto& kv : fixed) {
			const auto name = kv.first.as<std::string>();
			if (!find_param(per_model ? info.model_params : info.global_params, name))
				r.fail(key + "." + name, fmt::format("method '{}' has no {} parameter '{}'", info.name,
				                                     per_model ? "per-model" : "global", name));
			for (const auto& range : spec.searched)
				if (range.name == name && range.per_model == per_model) r.fail(key + "." + name, "is also searched");
			if (!kv.second.IsScalar()) r.fail(key + "." + name, "expected one value");
			(per_model ? spec.model_fixed : spec.fixed).emplace_back(name, yaml_scalar(kv.second));
		}
	}
	if (root["layer_groups"]) {
		const auto groups = r.count(root["layer_groups"], "layer_groups");
		if (groups < 1 || groups > 64) r.fail("layer_groups", "expected 1 to 64");
		spec.layer_groups = static_cast<int>(groups);
	}
	if (!root["algorithm"]) r.fail("algorithm", "missing: one of cma_es, m2n2, map, bayes_mo, sweep");
	const auto& algorithm = root["algorithm"].IsScalar() ? YAML::Node() : root["algorithm"];
	spec.algorithm = root["algorithm"].IsScalar() ? r.text(root["algorithm"], "algorithm")
	                                              : r.text(algorithm["name"], "algorithm.name");
	if (std::find(kAlgorithms.begin(), kAlgorithms.end(), spec.algorithm) == kAlgorithms.end())
		r.fail("algorithm",
		       fmt::format("unknown algorithm '{}' (valid: {})", spec.algorithm, fmt::join(kAlgorithms, ", ")));
	if (algorithm)
		for (const auto& kv : algorithm) {
			const auto key = kv.first.as<std::string>();
			if (key != "name") spec.settings[key] = r.number(kv.second, "algorithm." + key);
		}
	parse_fitness(r, root["fitness"], spec);
	if (!root["budget"]) r.fail("budget", "missing: give evaluations and/or minutes");
	r.keys(root["budget"], "budget", {"evaluations", "minutes"});
	if (root["budget"]["evaluations"]) spec.evaluations = r.count(root["budget"]["evaluations"], "budget.evaluations");
	if (root["budget"]["minutes"]) spec.minutes = r.number(root["budget"]["minutes"], "budget.minutes");
	if (spec.evaluations == 0 && !(spec.minutes > 0)) r.fail("budget", "is 0: give evaluations > 0 or minutes > 0");
	if (spec.minutes < 0) r.fail("budget.minutes", "must not be negative");
	if (root["seed"]) spec.seed = r.count(root["seed"], "seed");
	if (spec.algorithm == "sweep" &&
	    (spec.searched.size() != 1 || spec.searched[0].name != "weight" || !spec.searched[0].per_model ||
	     spec.searched[0].min != 0 || spec.searched[0].max != 1 || spec.layer_groups != 1))
		r.fail("search", "sweep walks the simplex of linear weights: search only weight, per model, in [0, 1]");
	return spec;
}

} // namespace weld::search
