// weld search SPEC OUT: finds the recipe parameters that maximize a fitness (search/spec.h) with
// one of the algorithms of search/algorithms.h. Each candidate is merged by the merge engine into
// a scratch folder and evaluated in this process with the runtime (weld eval's measures), so no
// process starts per candidate.
//
// Under MPI (mpirun -np K), every rank runs the same algorithm on the same results, so every rank
// proposes the same generation; candidate i of a generation is evaluated by rank i mod K and the
// results are gathered to all. The run is therefore the same for any K (and any --threads:
// evaluation runs on one thread per rank). Rank 0 writes:
//   OUT/journal.jsonl  one JSON line per evaluation, as it goes: index, generation, params
//                      (the recipe), genome, fitness, objectives, rank, seconds
//   OUT/best.yml       the best recipe (mergekit YAML; `weld merge` runs it unchanged)
//   OUT/model/         the best recipe merged
//   OUT/pareto.md, OUT/pareto.png   map and bayes_mo: the Pareto front of the evaluated candidates
// --resume replays OUT/journal.jsonl: candidates it holds are not evaluated again, and since the
// algorithm sees the same results, the search continues as if never interrupted. A budget in
// minutes stops at a time, so only an evaluation budget gives the same result on every run.
// Torch-free header.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace weld {
class Distributed;
}

namespace weld::search {

struct SearchOptions {
	std::filesystem::path spec, out;
	bool resume = false, force = false, quiet = false;
};

struct SearchResult {
	std::string best_recipe;
	double best_fitness = 0;
	uint64_t evaluations = 0, replayed = 0;
	double seconds = 0; // wall time of the evaluations made in this run
};

SearchResult run_search(const SearchOptions& options, const Distributed& distributed);

} // namespace weld::search
