// The search algorithms of weld search, as ask/tell loops over genomes in [0, 1]^n that maximize
// a fitness. Each draws its randomness from counter-based streams of the seed, so that a run is
// a function of (SPEC, seed, the fitness values it was told) alone: the same on any number of
// ranks, and replayable from a journal.
//
//   cma_es  CMA-ES (Hansen 2016's tutorial defaults; (μ/μ_w, λ), rank-one and rank-μ updates,
//           cumulative step size), samples projected onto the box. mergekit-evolve's optimizer.
//           Settings: population (default 4 + ⌊3 ln n⌋), sigma (0.3).
//   m2n2    Model merging of natural niches (Abrahamyan et al. 2025) over recipe parameters: an
//           archive whose members' fitness is shared per objective (a task: its score divided by
//           the archive's total on it), parents A by shared fitness and B by attraction (how much
//           B scores where A is weak), children mixed with ratio w before a random split point of
//           the genome and 1 − w after, plus a small mutation. Settings: archive (8), children
//           (4 per generation), mutation (0.05).
//   map     MAP (Li et al. 2024), with its adaptive sampling: sample coefficient vectors, fit a
//           quadratic surrogate per objective (ridge least squares), predict many random points,
//           keep the predicted Pareto front and evaluate its `batch` points of highest predicted
//           fitness; refit with them and repeat until the budget is spent. Settings: samples (half
//           the budget), candidates (4096), ridge (1e-3), batch (20).
//   bayes_mo  multi-objective Bayesian optimisation (ParEGO: a random Chebyshev scalarization per
//           point, a Gaussian process on it, expected improvement over random candidates).
//           Settings: initial (2n + 2), candidates (2048), batch (4).
//   sweep   every point of the simplex grid of the per-model weights with `steps` divisions, in
//           order. Settings: steps (4).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace weld::search {

struct Evaluated {
	std::vector<double> genome;
	double fitness = 0;
	std::vector<double> objectives;
};

class Algorithm {
public:
	virtual ~Algorithm() = default;
	// The next generation's genomes, at most `left` of them; empty when the algorithm is done.
	virtual std::vector<std::vector<double>> ask(uint64_t left) = 0;
	// What the last generation scored, in the order asked.
	virtual void tell(const std::vector<Evaluated>& results) = 0;
};

// objective_weights: how the fitness combines the objectives (MAP's surrogates predict each).
// Throws weld::Error for an unknown setting or a value out of range.
std::unique_ptr<Algorithm> make_algorithm(const std::string& name, const std::map<std::string, double>& settings,
                                          size_t genes, const std::vector<double>& objective_weights, uint64_t seed,
                                          uint64_t budget);

// Indices of the non-dominated points (maximizing every objective), in input order.
std::vector<size_t> pareto_front(const std::vector<std::vector<double>>& points);

} // namespace weld::search
