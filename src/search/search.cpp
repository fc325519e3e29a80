#include "search/search.h"

#include "exec/distributed.h"
#include "exec/merge.h"
#include "io/output_folder.h"
#include "nn/eval.h"
#include "plan/plan.h"
#include "plan/recipe.h"
#include "search/algorithms.h"
#include "search/plot.h"
#include "search/spec.h"
#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>

namespace weld::search {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// What the journal says was evaluated, by index.
std::map<uint64_t, nlohmann::json> read_journal(const fs::path& file) {
	std::map<uint64_t, nlohmann::json> out;
	std::ifstream in(file);
	std::string line;
	while (std::getline(in, line)) {
		if (in.eof()) break; // a last line without its newline: cut off by a kill, evaluated again
		nlohmann::json j;
		try {
			j = nlohmann::json::parse(line);
		} catch (const nlohmann::json::exception&) {
			break;
		}
		out[j.at("index").get<uint64_t>()] = j;
	}
	return out;
}

// The measures of one merged model: task accuracies and files' accuracy or -log perplexity.
std::vector<double> measure(const SearchSpec& spec, const fs::path& model) {
	std::vector<double> out;
	std::vector<std::string> tasks;
	for (const auto& m : spec.measures)
		if (m.is_task) tasks.push_back(m.name);
	std::map<std::string, double> by_task;
	if (!tasks.empty())
		for (const auto& s : nn::evaluate_tasks(model, tasks, spec.held_out, spec.task_seed, {"float32", 1}))
			by_task[s.task] = s.accuracy;
	for (const auto& m : spec.measures) {
		if (m.is_task) {
			out.push_back(by_task.at(m.name));
			continue;
		}
		const auto report = nn::evaluate(model, m.name, {"float32", 1});
		out.push_back(report.kind == nn::EvalReport::Kind::Accuracy ? report.accuracy : -report.mean_nll);
	}
	return out;
}

std::vector<double> evaluate_candidate(const SearchSpec& spec, const std::string& recipe, const fs::path& scratch,
                                       uint64_t seed) {
	MergeOptions merge;
	merge.recipe_path = spec.label;
	merge.recipe_text = recipe;
	merge.out_dir = scratch;
	merge.force = true;
	merge.seed = seed;
	run_merge(merge);
	return measure(spec, scratch);
}

std::string genome_text(const std::vector<double>& genome) {
	return nlohmann::json(genome).dump();
}

// Per generation: every rank evaluates its share (index mod ranks) and all gather the results, as
// doubles' bits: [fitness, objectives..., seconds] per candidate, zeros where another rank owns it.
std::vector<std::vector<double>> gather(const Distributed& d, const std::vector<std::vector<double>>& mine,
                                        size_t width) {
	std::vector<uint64_t> bits;
	for (const auto& row : mine)
		for (size_t j = 0; j < width; ++j) {
			uint64_t b = 0;
			const double v = j < row.size() ? row[j] : 0.0;
			std::memcpy(&b, &v, sizeof b);
			bits.push_back(b);
		}
	const auto all = d.all_gather(bits);
	std::vector<std::vector<double>> out(mine.size(), std::vector<double>(width, 0));
	for (size_t i = 0; i < mine.size(); ++i) {
		const size_t owner = i % d.size();
		for (size_t j = 0; j < width; ++j)
			std::memcpy(&out[i][j], &all[(owner * mine.size() + i) * width + j], sizeof(double));
	}
	return out;
}

void write_outputs(const SearchOptions& o, const SearchSpec& spec, const std::vector<Evaluated>& seen,
                   const std::vector<std::string>& recipes, size_t best) {
	const auto best_text =
	    fmt::format("# Found by weld search ({}, seed {}) from {}: fitness {:.6f} on the SPEC's measures, after {} "
	                "evaluations.\n{}",
	                spec.algorithm, spec.seed, spec.label, seen[best].fitness, seen.size(), recipes[best]);
	write_text_file(o.out / "best.yml", best_text);
	MergeOptions merge;
	merge.recipe_path = o.out / "best.yml";
	merge.recipe_text = best_text;
	merge.out_dir = o.out / "model";
	merge.force = true;
	merge.seed = spec.seed;
	run_merge(merge);
	if (spec.algorithm != "map" && spec.algorithm != "bayes_mo") return;
	std::vector<std::vector<double>> points;
	for (const auto& e : seen)
		points.push_back(e.objectives);
	const auto front = pareto_front(points);
	std::string header = "| candidate | fitness |", rule = "|---:|---:|";
	for (const auto& m : spec.measures)
		header += " " + m.name + " |", rule += "---:|";
	std::string table = "# Pareto front of the evaluated candidates\n\n" + header + "\n" + rule + "\n";
	for (size_t i : front) {
		table += fmt::format("| {} | {:.4f} |", i, seen[i].fitness);
		for (double v : seen[i].objectives)
			table += fmt::format(" {:.4f} |", v);
		table += "\n";
	}
	table += fmt::format("\n{} of {} candidates are on the front. pareto.png plots {} (x) against {} (y): every "
	                     "candidate in grey, the front in red.\n",
	                     front.size(), seen.size(), spec.measures[0].name,
	                     spec.measures.size() > 1 ? spec.measures[1].name : std::string("fitness"));
	write_text_file(o.out / "pareto.md", table);
	std::vector<std::pair<double, double>> xy;
	for (const auto& e : seen)
		xy.emplace_back(e.objectives[0], e.objectives.size() > 1 ? e.objectives[1] : e.fitness);
	write_scatter_png(o.out / "pareto.png", xy, front);
}

} // namespace

SearchResult run_search(const SearchOptions& o, const Distributed& d) {
	const auto spec = parse_search_spec(read_text_file(o.spec), o.spec.string());
	const auto genes = spec.genes();
	// The recipe must plan before any work: models, base and parameters as the method needs them.
	build_plan(parse_recipe(spec.recipe(std::vector<double>(genes.size(), 0.5)), spec.label), spec.seed);
	std::vector<double> weights;
	for (const auto& m : spec.measures)
		weights.push_back(m.weight);
	auto algorithm = make_algorithm(spec.algorithm, spec.settings, genes.size(), weights, spec.seed,
	                                spec.evaluations ? spec.evaluations : 64);
	std::map<uint64_t, nlohmann::json> journal;
	d.agree([&] {
		if (o.resume) {
			if (!fs::is_regular_file(o.out / "journal.jsonl"))
				throw Error(fmt::format("{}: no journal.jsonl to resume", o.out.string()));
			journal = read_journal(o.out / "journal.jsonl");
		} else if (fs::exists(o.out) && !o.force) {
			throw Error(fmt::format("{}: already exists (use --force to replace it, or --resume to continue it)",
			                        o.out.string()));
		}
	});
	d.agree([&] {
		if (!d.is_root()) return;
		if (!o.resume) {
			fs::remove_all(o.out);
			fs::create_directories(o.out);
		}
		// Keep the complete lines only: a line cut off by a kill is evaluated again.
		std::string kept;
		for (const auto& [index, j] : journal)
			kept += j.dump() + "\n";
		write_text_file(o.out / "journal.jsonl", kept);
	});
	// Each rank merges into its own scratch folder (and its temporary folders go inside .scratch).
	const auto scratch = o.out / ".scratch" / fmt::format("rank-{}", d.rank());
	d.agree([&] { fs::create_directories(scratch.parent_path()); });
	std::ofstream journal_out;
	if (d.is_root()) journal_out.open(o.out / "journal.jsonl", std::ios::app);

	SearchResult result;
	std::vector<Evaluated> seen;
	std::vector<std::string> recipes;
	size_t best = 0;
	const auto start = Clock::now();
	uint64_t generation = 0;
	const uint64_t limit = spec.evaluations ? spec.evaluations : UINT64_MAX;
	while (seen.size() < limit) {
		// A minutes budget is judged by rank 0 alone, so every rank stops at the same generation.
		const double minutes = std::chrono::duration<double>(Clock::now() - start).count() / 60;
		const bool out_of_time = spec.minutes > 0 && minutes >= spec.minutes;
		if (d.broadcast(out_of_time ? "stop" : "go") == "stop") break;
		const auto asked = algorithm->ask(limit - seen.size());
		if (asked.empty()) break;
		std::vector<std::vector<double>> mine(asked.size());
		d.agree([&] {
			for (size_t i = 0; i < asked.size(); ++i) {
				const uint64_t index = seen.size() + i;
				const auto it = journal.find(index);
				if (it != journal.end()) {
					if (genome_text(it->second.at("genome").get<std::vector<double>>()) != genome_text(asked[i]))
						throw Error(fmt::format("{}: candidate {} differs from the journal's: the SPEC or weld changed "
						                        "since; start again without --resume",
						                        o.out.string(), index));
					continue;
				}
				if (i % d.size() != d.rank()) continue;
				const auto t0 = Clock::now();
				auto row = std::vector<double>{0};
				const auto objectives = evaluate_candidate(spec, spec.recipe(asked[i]), scratch, spec.seed);
				row.insert(row.end(), objectives.begin(), objectives.end());
				row.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
				mine[i] = row;
			}
		});
		const auto rows = gather(d, mine, spec.measures.size() + 2);
		std::vector<Evaluated> told;
		for (size_t i = 0; i < asked.size(); ++i) {
			const uint64_t index = seen.size();
			Evaluated e{asked[i], 0, {}};
			double seconds = 0;
			const auto it = journal.find(index);
			if (it != journal.end()) {
				e.objectives = it->second.at("objectives").get<std::vector<double>>();
				++result.replayed;
			} else {
				e.objectives.assign(rows[i].begin() + 1, rows[i].end() - 1);
				seconds = rows[i].back();
				result.seconds += seconds;
			}
			e.fitness = spec.fitness(e.objectives);
			recipes.push_back(spec.recipe(e.genome));
			if (it == journal.end() && d.is_root()) {
				const nlohmann::ordered_json line = {{"index", index},           {"generation", generation},
				                                     {"params", recipes.back()}, {"genome", e.genome},
				                                     {"fitness", e.fitness},     {"objectives", e.objectives},
				                                     {"rank", i % d.size()},     {"seconds", seconds}};
				journal_out << line.dump() << "\n" << std::flush;
			}
			if (seen.empty() || e.fitness > seen[best].fitness) best = seen.size();
			seen.push_back(e);
			told.push_back(e);
		}
		algorithm->tell(told);
		++generation;
		if (!o.quiet && d.is_root()) {
			const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
			const auto evaluated = seen.size() - result.replayed; // in this run: what the ETA is judged by
			const double each = evaluated > 0 ? elapsed / static_cast<double>(evaluated) : 0;
			const auto eta = spec.evaluations
			                     ? fmt::format(", ETA {:.0f}s", each * static_cast<double>(limit - seen.size()))
			                     : std::string();
			std::fprintf(stderr, "weld search: %zu/%s evaluations, best fitness %.4f%s\n", seen.size(),
			             spec.evaluations ? std::to_string(limit).c_str() : "-", seen[best].fitness, eta.c_str());
		}
	}
	if (seen.empty()) throw Error(fmt::format("{}: the budget ended before any evaluation", spec.label));
	d.agree([&] {
		if (!d.is_root()) return;
		write_outputs(o, spec, seen, recipes, best);
		fs::remove_all(o.out / ".scratch"); // and whatever a killed run left there
	});
	result.best_recipe = recipes[best];
	result.best_fitness = seen[best].fitness;
	result.evaluations = seen.size();
	return result;
}

} // namespace weld::search
