// RMM folders (weld rmm build / revert): the basis of N low-rank inputs and their coefficients.
//
//   rmm.json              inputs (path, adapter config, reconstruction errors), per module the
//                         shapes, each input's scaling and the coefficients of A and B (N × K)
//   rmm_basis.safetensors <module>.lora_A.basis [K, r, in], <module>.lora_B.basis [K, out, r]
//
// Inputs are PEFT LoRA adapters, or full fine-tunes of a base model that build compresses first:
// every 2-D weight's ΔW = θ_i − θ_base (embeddings and lm_head aside) is cut to its rank-r
// truncated SVD as weld extract-lora cuts it (A = √S Vᵀ, B = U √S; randomized for large matrices).
#pragma once

#include "io/peft.h"

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace weld::lora {

struct RmmBuildOptions {
	size_t rank = 2;                           // K, the basis size (at most the number of inputs)
	std::optional<std::filesystem::path> base; // for fine-tuned model inputs
	std::optional<size_t> svd_rank;            // their compression rank (required with model inputs)
	bool force = false;
};

struct RmmInputReport {
	std::string path;
	double reconstruction_error = 0; // ‖ΔŴ − ΔW‖_F / ‖ΔW‖_F over all modules (ΔW: the low-rank input)
	std::optional<double> compression_error; // model inputs: ‖ΔW_r − ΔW‖_F / ‖ΔW‖_F of the SVD cut
	std::string worst_module;
	double worst_module_error = 0;
};

// A model input's ΔW = θ − θ_base cut to rank `rank`, as a LoRA adapter (scaling 1) over the base's
// 2-D weights; *compression_error gets ‖ΔW_r − ΔW‖_F / ‖ΔW‖_F over them all.
PeftAdapter compress_fine_tune(const std::filesystem::path& model, const std::filesystem::path& base, size_t rank,
                               double* compression_error);

// Fits and writes the RMM folder `out` (all or nothing). Returns one report per input.
std::vector<RmmInputReport> build_rmm(const std::vector<std::string>& inputs, const std::filesystem::path& out,
                                      const RmmBuildOptions& options);

// Writes input `index` (from 0) rebuilt from the basis as a PEFT adapter folder `dest` with the
// input's own config. Returns its report from build.
RmmInputReport revert_rmm(const std::filesystem::path& rmm_dir, size_t index, const std::filesystem::path& dest,
                          bool force);

} // namespace weld::lora
