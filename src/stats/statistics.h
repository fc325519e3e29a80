// weld stats: per-tensor statistics of a model on data, computed with the runtime (src/nn) and
// stored as a safetensors folder that merge recipes refer to (`parameters: {stats: path}`).
//
//   fisher       diagonal empirical Fisher: for every weight, the mean over scored tokens of
//                (d log p(token | tokens before) / d weight)^2, one gradient per token (Matena &
//                Raffel 2022). Scored tokens: a prompt/answer record's answer, every token after
//                the first of a text or token-id line. Same name and shape as the weight.
//   gram         for every linear map y = x Wᵀ, the mean over input tokens of x xᵀ (RegMean's
//                XᵀX / N), float32 [in, in], stored under the weight's name. Accumulated one batch
//                at a time, so memory is one [in, in] buffer per distinct layer input, whatever
//                the data size (q/k/v share one, as do gate/up).
//   activations  for every linear map (its weight's name without ".weight"): <name>.input_mean,
//                <name>.input_sq_mean (E[x], E[x^2] per input feature), <name>.output_mean and
//                <name>.output_sq_mean, over input tokens.
//   gradient     for every weight, the gradient of the mean negative log-likelihood of the
//                scored tokens (signed; one backward pass per batch): the first-order change of
//                the loss, as RCP-Merging's domain sensitivity reads it. Same name and shape.
//
// The folder holds model.safetensors whose __metadata__ says weld_stats (the kind), data (the
// file name), data_sha256, tokens, sequences and model. Torch-free header.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

namespace weld::stats {

enum class Kind { Fisher, Gram, Activations, Gradient };

// "fisher", "gram", "activations", "gradient"; anything else throws weld::Error listing them.
Kind parse_kind(std::string_view name);
std::string_view kind_name(Kind kind);

struct StatsJob {
	std::filesystem::path model, data, out;
	Kind kind = Kind::Fisher;
	uint64_t max_tokens = 0; // 0: the whole file; else stop after the sequence that reaches it
	int64_t batch_size = 8;  // sequences per forward pass (fisher takes one gradient per token anyway)
	int threads = 0;         // 0: libtorch's default
	bool force = false;      // replace an existing out
};

struct StatsProgress {
	uint64_t tokens = 0, total_tokens = 0; // counted as the kind counts them
	double seconds = 0;
};

struct StatsSummary {
	uint64_t tokens = 0, sequences = 0;
	std::string data_sha256;
};

// Computes the statistics and publishes job.out (all or nothing). Throws weld::Error naming the
// model, data file or output at fault.
StatsSummary compute_statistics(const StatsJob& job, const std::function<void(const StatsProgress&)>& on_progress);

// SHA-256 of a file's bytes, as 64 lowercase hex digits.
std::string file_sha256(const std::filesystem::path& file);

} // namespace weld::stats
