// weld extract-lora: a PEFT LoRA adapter approximating a fine-tune's difference from its base,
// as mergekit-extract-lora makes it (mergekit/scripts/extract_lora.py). Each linear module's task
// vector Δ = W_finetune − W_base gets a truncated SVD U S Vᵀ; rank = min(max_rank, min(m, n)),
// and with sv_epsilon > 0 also at most the number of singular values above it. A = √S·Vᵀ and
// B = U·√S (distribute_scale), else A = S·Vᵀ and B = U. Embeddings go whole into
// modules_to_save, or with embed_lora are decomposed transposed (lora_embedding_A/B); modules
// that are not matrices (norms) are saved whole unless skip_undecomposable.
#pragma once

#include "linalg/linalg.h"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace weld {

// Which SVD decomposes a task vector: Auto takes the randomized one for large matrices
// (kRandomizedSvdMinSide), Full is LAPACK's complete SVD truncated.
enum class LoraSvd { Auto, Full, Randomized };

// Auto uses the randomized SVD when the smaller side of the matrix is at least this and
// max_rank + oversampling is at most a quarter of it. The randomized SVD samples max_rank +
// randomized_svd_oversample(max_rank) directions: as many again as the rank (at least 16), which
// with 4 power iterations keeps a flat spectrum's error within 0.1% of the optimal
// (bench/lora_svd.cpp).
constexpr size_t kRandomizedSvdMinSide = 1024;
constexpr int kRandomizedSvdPowerIterations = 4;
constexpr size_t randomized_svd_oversample(size_t rank) {
	return rank < 16 ? 16 : rank;
}

struct ExtractedFactors {
	uint64_t rank = 0;
	std::vector<float> a;               // [rank, cols]
	std::vector<float> b;               // [rows, rank]
	std::vector<float> singular_values; // the rank kept
	bool randomized = false;
};

// The factors of one task vector (rows × cols). key seeds the randomized SVD's test matrix.
ExtractedFactors decompose_task_vector(const linalg::MatrixF& delta, int64_t max_rank, double sv_epsilon,
                                       bool distribute_scale, LoraSvd svd, uint64_t key);

struct ExtractLoraOptions {
	std::string base; // model references (folder or HF cache repo id)
	std::string finetune;
	std::filesystem::path out;
	int64_t max_rank = 128;
	double sv_epsilon = 0;
	bool distribute_scale = true;
	bool embed_lora = false;
	std::vector<std::string> modules_to_save; // module names or their last part (e.g. lm_head)
	std::vector<std::string> include_regexes; // a module is decomposed only when one matches (re.search)
	std::vector<std::string> exclude_regexes; // and none of these does
	bool skip_undecomposable = false;
	LoraSvd svd = LoraSvd::Auto;
	unsigned threads = 1;
	bool force = false;
	std::string invocation; // the command line, for the model card
};

struct ExtractLoraSummary {
	size_t decomposed = 0; // modules written as LoRA factors
	size_t randomized = 0; // of which by the randomized SVD
	size_t saved = 0;      // tensors stored whole (modules_to_save)
	int64_t rank = 0;      // the adapter's r (the largest module rank)
	std::vector<std::string> warnings;
};

ExtractLoraSummary extract_lora(const ExtractLoraOptions& options);

} // namespace weld
