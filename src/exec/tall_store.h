// TALL-mask compression ("Localizing Task Information for Improved Model Merging and
// Compression", Wang et al. 2024): N fine-tunes of one base are stored as the multi-task vector
// tau_MTL = sum_t (theta_t - theta_0) plus one bit per weight and task (the TALL masks), and any
// single expert is reconstructed as theta_0 + m_t (.) tau_MTL.
//
// A store is a folder: tall.json (base, tasks, lambdas), multitask_vector/ (a safetensors model
// folder holding tau_MTL in the base's dtype) and masks/ (U8 tensors "<name>.tall_mask.<t>" of
// ceil(n/8) bytes, bit j of a mask in bit j % 8 of byte j / 8). The base model is referenced, not copied.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace weld {

struct TallCompressOptions {
	std::string base;               // model reference (folder or HF repo id)
	std::vector<std::string> tasks; // the fine-tunes, model references
	double tall_lambda = 0.6;       // the mask threshold factor, one for every task (as consensus_*)
	std::filesystem::path out;
	bool force = false;
	uint64_t max_shard_bytes = 5'000'000'000;
};

struct TallCompressSummary {
	size_t tensors = 0;
	uint64_t expert_bytes = 0;         // what storing every fine-tune would take
	uint64_t store_bytes = 0;          // multi-task vector + masks
	std::vector<double> kept_fraction; // per task: share of weights its mask keeps
};

TallCompressSummary tall_compress(const TallCompressOptions& options);

struct TallExtractOptions {
	std::filesystem::path store;
	std::string task;                // as named at compression, or its 0-based index
	std::optional<std::string> base; // overrides the base recorded in tall.json
	std::filesystem::path out;
	bool force = false;
	uint64_t max_shard_bytes = 5'000'000'000;
};

// Writes the reconstructed expert as a Hugging Face model folder (config and tokenizer from the base).
void tall_extract(const TallExtractOptions& options);

} // namespace weld
