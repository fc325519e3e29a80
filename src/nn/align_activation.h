// The data-driven half of weld align: matching hidden units by how they fire on data (DIMAT /
// ZipIt-style activation matching) and PLeaS (partial matching, then layer-wise least squares
// on features). The weight-domain half (permutations, weight matching) is align/.
#pragma once

#include "align/permutation.h"
#include "nn/llama.h"

#include <filesystem>
#include <string>
#include <vector>

namespace weld::nn {

// The sequences alignment statistics are taken on: prompt + answer of prompt/answer JSONL, text
// lines, or token-id lines, with the model's tokenizer; the first `samples` of them, each cut to
// the model's positions. Throws weld::Error naming the file when it has fewer than `min_tokens`
// tokens in those sequences.
std::vector<std::vector<int64_t>> read_alignment_sequences(const std::filesystem::path& file,
                                                           const std::filesystem::path& model_dir,
                                                           const LlamaConfig& config, size_t samples,
                                                           int64_t min_tokens);

// Pearson correlations of every unit of `ref` with every unit of `model` on the sequences, per
// permutation group, and the permutation of `model` that maximizes the summed correlation of
// matched units in each group (see align/permutation.h for the groups). Residual units are
// compared over the output of every layer; MLP units on down_proj's input; query/key heads on
// q_proj/k_proj's outputs, dimension by dimension (RoPE fixes the dimensions); value dims on
// v_proj's output. With `absolute`, units are matched by |correlation| (mergekit's --absval).
struct ActivationMatch {
	ModelPermutation permutation;
	// Per layer, the correlation of each ref MLP unit with the model unit matched to it.
	std::vector<std::vector<double>> mlp_correlation;
	double residual_before = 0, residual_after = 0; // mean correlation of unit i with unit i / its match
	double mlp_before = 0, mlp_after = 0;
};
ActivationMatch match_activations(LlamaModel& ref, LlamaModel& model,
                                  const std::vector<std::vector<int64_t>>& sequences, bool absolute = false);

// Applies a permutation to a loaded model (the same function, other unit order).
void permute_model(LlamaModel& model, const LlamaShape& shape, const ModelPermutation& permutation);

// Beyond permutations (for a model already permuted onto ref by match_activations): the
// residual stream rotated by the orthogonal R that best maps MODEL's residual states onto REF's
// (Procrustes), with every RMSNorm weight folded into the maps that read it and REF's norm
// weights unfolded back, so the output shares REF's norm weights; each value head rotated by its
// own orthogonal Procrustes map (o_proj's columns following); each RoPE pair of a key/value group
// rotated by the angle that best maps MODEL's keys and queries onto REF's (rotations commute with
// RoPE and keep qᵀk). The function is unchanged; tied embeddings are refused.
struct RotationReport {
	double residual_before = 0, residual_after = 0; // ‖H_model − H_ref‖ / ‖H_ref‖ without and with R
};
RotationReport rotate_onto(LlamaModel& ref, LlamaModel& model, const std::vector<std::vector<int64_t>>& sequences);

// PLeaS (Nasery et al. 2024) for two models whose units are already matched (`aligned` permuted
// onto `ref`, `match` its MLP correlations): each layer's MLP keeps `width` units: the
// 2·intermediate − width best-correlated pairs merged and the rest kept from both models (width ≥
// intermediate), or the `width` best pairs (width < intermediate). Every linear map of the merged
// model, in forward order, is then the least-squares fit W = argmin ‖X_M Wᵀ − ½(Y_ref + Y_aligned)‖²
// of its output to the two models' mean output on the sequences, X_M being the merged model's own
// input to that map (so errors of earlier layers are corrected by later ones); `ridge` is relative
// to the mean diagonal of X_MᵀX_M. Embeddings and norms are the mean of the two. Returns the merged
// model, with the config's intermediate_size set to width.
struct PleasOptions {
	int64_t width = 0; // 0: the models' intermediate_size
	double ridge = 1e-4;
};
LlamaModel pleas_merge(LlamaModel& ref, LlamaModel& aligned, const ActivationMatch& match,
                       const std::vector<std::vector<int64_t>>& sequences, const std::string& ref_config_json,
                       const PleasOptions& options);

// weld align --method activation|pleas: loads REF and MODEL (same shape, else an error naming
// both), reads the data, matches, and writes MODEL permuted onto REF (activation: the same
// function, MODEL's dtypes) or the PLeaS merge of the two (float32), all or nothing.
struct DataAlignJob {
	std::filesystem::path ref, model, out, data;
	std::string method; // activation or pleas
	int64_t width = 0;
	double ridge = 1e-4;
	bool rotate = false; // also rotate_onto() after the permutation
	size_t samples = 256;
	bool force = false;
	int threads = 0; // 0: all cores
	uint64_t max_shard_bytes = 5'000'000'000;
};
struct DataAlignReport {
	int64_t sequences = 0, tokens = 0;
	ActivationMatch match;
	double residual_misfit_before = 0, residual_misfit_after = 0; // with rotate
};
DataAlignReport run_data_alignment(const DataAlignJob& job);

// The fewest tokens the activation statistics of a shape take: twice its widest layer (and
// `width`), so that every correlation and least-squares fit has more samples than unknowns.
int64_t min_alignment_tokens(const LlamaShape& shape, int64_t width = 0);

} // namespace weld::nn
