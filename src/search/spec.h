// weld search's SPEC: what is merged, which recipe parameters are searched over which ranges, the
// algorithm, the fitness and the budget. A YAML file:
//
//   method: ties                       # a weld merge method
//   base_model: models/base            # as the method needs it
//   models: [models/a, models/b]       # the models merged
//   parameters: {normalize: true}      # fixed global parameters (optional)
//   model_parameters: {weight: 1}      # fixed parameters of every model (optional)
//   search:                            # the searched parameters: name -> range
//     weight: {min: 0, max: 1, per: model}
//     lambda: {min: 0.3, max: 1.5}     # per: global (the default)
//   layer_groups: 1                    # per-model parameters get one value per layer group
//   algorithm: {name: cma_es, population: 8, sigma: 0.3}
//   fitness:
//     tasks: [cipher_copy, cipher_sort]  # or {task: weight}: weld eval --tasks accuracy
//     held_out: 100                      # prompts per task
//     task_seed: 1                       # 1: validation prompts (0 is the test set)
//     files: [{data: val.jsonl, weight: 1}]  # weld eval accuracy (prompt/answer) or -log perplexity
//   budget: {evaluations: 100, minutes: 30}
//   seed: 0
//
// A candidate is a genome in [0, 1]^n, one gene per (parameter, model, layer group), mapped
// linearly onto each range. Torch-free.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace weld::search {

struct Range {
	std::string name;
	double min = 0, max = 1;
	bool per_model = false;
};

struct Gene {
	std::string param;
	int model = -1; // index into SearchSpec::models; -1 for a global parameter
	int group = 0;  // layer group
	double min = 0, max = 1;
};

struct Measure {
	std::string name;    // task name, or the file's path
	bool is_task = true; // else a data file
	double weight = 1;
};

struct SearchSpec {
	std::string label; // the SPEC file, for messages
	std::string method;
	std::optional<std::string> base_model;
	std::vector<std::string> models;
	std::vector<std::pair<std::string, std::string>> fixed;       // name -> YAML scalar
	std::vector<std::pair<std::string, std::string>> model_fixed; // the same for every model
	std::vector<Range> searched;
	int layer_groups = 1;
	std::string algorithm;
	std::map<std::string, double> settings;
	std::vector<Measure> measures;
	uint64_t held_out = 100, task_seed = 1;
	uint64_t evaluations = 0; // 0: no limit (minutes then)
	double minutes = 0;       // 0: no limit
	uint64_t seed = 0;

	std::vector<Gene> genes() const;
	// The parameters a genome stands for: name -> value (global) or name -> per model.
	std::string recipe(const std::vector<double>& genome) const;
	// Fitness from the measures' values (accuracy, or -log perplexity): their weighted mean.
	double fitness(const std::vector<double>& objectives) const;
};

// Parses and checks a SPEC before any work: unknown keys, method or algorithm, parameters the
// method does not take, empty or inverted ranges, unknown tasks, missing files, a zero budget:
// each one weld::Error naming the SPEC file and the field.
SearchSpec parse_search_spec(const std::string& yaml_text, const std::string& label);

} // namespace weld::search
