// Git Re-Basin weight matching (Ainsworth, Hayase & Srinivasa, 2023) for Llama-family models: the
// function-preserving permutation of MODEL (see align/permutation.h) that maximizes
// Σ over all tensors ⟨W_ref, P(W_model)⟩, by coordinate descent over the permutation groups.
#pragma once

#include "align/permutation.h"

#include <cstdint>
#include <string>

namespace weld {

struct WeightMatchingOptions {
	uint64_t seed = 0;        // the order in which each sweep visits the groups
	int max_iterations = 100; // sweeps
};

struct WeightMatchingResult {
	ModelPermutation permutation;
	int iterations = 0; // sweeps run, the last one changing nothing unless max_iterations stopped it
};

// Coordinate descent over the groups: the residual stream; per layer the MLP units; per layer the
// key/value heads, where each candidate pair (ref head, model head) is scored by the best inner
// assignment of its query heads and value dims (alternated until neither changes) and an outer
// assignment picks the pairs. Every step solves its assignment exactly (double precision costs)
// and is taken only when it raises the objective, so the descent ends. `ref` and `model` hold
// the tensors read_weights gives for `shape`.
WeightMatchingResult weight_matching(const WeightMap& ref, const WeightMap& model, const LlamaShape& shape,
                                     const WeightMatchingOptions& options);

// ⟨a, b⟩ / (‖a‖‖b‖) over every tensor the two maps share.
double weight_cosine(const WeightMap& a, const WeightMap& b);

struct AlignOptions {
	std::string ref, model, out;
	std::string method = "weight_matching";
	WeightMatchingOptions matching;
	bool force = false;
	uint64_t max_shard_bytes = 5'000'000'000;
};

struct AlignReport {
	int iterations = 0;
	double cosine_before = 0, cosine_after = 0;
};

// weld align --method weight_matching: MODEL permuted onto REF, written to OUT in MODEL's dtypes
// with MODEL's config and tokenizer (all or nothing).
AlignReport align_by_weight_matching(const AlignOptions& options);

} // namespace weld
