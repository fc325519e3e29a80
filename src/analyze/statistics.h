// What a family of fine-tunes did to their base, tensor by tensor: the statistics of their task
// vectors τ_i = θ_i − θ_base that `weld analyze` reports, each the quantity a merge method acts on
// (docs/analyze.md). A tensor's statistics are kept as sums, so that a layer, a module type or
// the whole model combines its tensors exactly.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace weld::analyze {

// Localize-and-Stitch's share: each model's top 10% of entries by |τ|.
constexpr double kTopKFraction = 0.1;
// Points of the cumulative-energy curve of a spectrum: kept rank fractions 0, 1/20, ..., 1.
constexpr int kCurvePoints = 21;

// Where a tensor sits: "model.layers.3.self_attn.q_proj.weight" is layer 3, module q_proj;
// "model.embed_tokens.weight" is no layer (-1), module embed_tokens.
struct TensorPlace {
	int layer = -1;
	std::string module;
};
TensorPlace place_of(std::string_view tensor_name);

// Sums over the entries of one tensor (or of a group of tensors).
struct Sums {
	uint64_t elements = 0;
	double base_sq = 0;                              // ‖θ_base‖²
	std::vector<std::vector<double>> dot;            // [i][j]: ⟨τ_i, τ_j⟩ (the diagonal: ‖τ_i‖²)
	uint64_t sign_conflicts = 0;                     // entries whose nonzero τ_i disagree in sign
	double abs_sum = 0;                              // Σ_i Σ_j |τ_ij|
	double election_dropped = 0;                     // of it, entries against the sign of Σ_i τ_ij (TIES' election)
	uint64_t top_k = 0;                              // entries in each model's top-k set
	std::vector<std::vector<uint64_t>> top_k_shared; // [i][j]: |top_k(τ_i) ∩ top_k(τ_j)|

	// 2-D tensors (matrices) only: sums over them, and how many.
	uint64_t matrices = 0;
	std::vector<double> effective_rank_sum;            // per model
	std::vector<double> top_rank_energy_sum;           // per model
	std::vector<std::vector<double>> energy_curve_sum; // per model, kCurvePoints

	explicit Sums(size_t models = 0);
	void add(const Sums& other);

	// Derived values; 0 where undefined (a zero vector).
	double relative_norm(size_t i) const; // ‖τ_i‖ / ‖θ_base‖
	double cosine(size_t i, size_t j) const;
	double sign_conflict_rate() const; // sign_conflicts / elements
	double election_drop_rate() const; // election_dropped / abs_sum
	double top_k_jaccard(size_t i, size_t j) const;
	double mean_effective_rank(size_t i) const;
	double mean_top_rank_energy(size_t i) const;
};

struct TensorStats {
	std::string name;
	std::vector<uint64_t> shape;
	TensorPlace place;
	Sums sums;
	// Matrices: the rank TSV keeps of each task vector, max(1, ⌊min(m, n) / models⌋).
	uint64_t kept_rank = 0;
};

// Entropy effective rank of a spectrum (Roy & Vetterli 2007): exp(−Σ p_k ln p_k), p_k = σ_k / Σσ.
double effective_rank(std::span<const double> singular_values);
// Σ_{k<rank} σ_k² / Σ σ_k².
double energy_in_top(std::span<const double> singular_values, uint64_t rank);

// The statistics of one tensor; models[i] and base have the same number of elements.
TensorStats analyze_tensor(std::string name, std::vector<uint64_t> shape, std::span<const float> base,
                           const std::vector<std::span<const float>>& models);

} // namespace weld::analyze
