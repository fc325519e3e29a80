// The options of `weld align`, shared by the weld CLI (which runs weight_matching itself and hands
// the data-driven methods to weld-torch, cli/torch_program.h) and weld-torch.
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <vector>

namespace weld::cli {

struct AlignArgs {
	std::string ref, model, out;
	std::string method = "weight_matching";
	std::string data;
	int64_t width = 0;
	double ridge = 1e-4;
	bool rotate = false;
	size_t samples = 256;
	uint64_t seed = 0;
	int64_t iterations = 100;
	std::string shard_size = "5GB";
	int threads = 0;
	bool force = false;
	bool quiet = false;
};

inline void add_align_options(CLI::App& cmd, AlignArgs& a) {
	cmd.add_option("ref", a.ref, "the model to align to (or Hugging Face cache id)")->required();
	cmd.add_option("model", a.model, "the model to permute onto REF")->required();
	cmd.add_option("out", a.out, "output folder")->required();
	cmd.add_option("--method", a.method,
	               "weight_matching (Git Re-Basin, weights only), activation (match units by activation "
	               "correlations on --data) or pleas (partial matching + least squares: writes the MERGED model)")
	    ->check(CLI::IsMember({"weight_matching", "activation", "pleas"}));
	cmd.add_option("--data", a.data, "activation and pleas: data file (prompt/answer JSONL, text lines or token ids)");
	cmd.add_option("--width", a.width, "pleas: MLP units per layer of the merged model (default: the models')");
	cmd.add_option("--ridge", a.ridge,
	               "pleas: ridge of the least-squares fits, relative to the mean squared input (default 1e-4)")
	    ->check(CLI::NonNegativeNumber);
	cmd.add_flag("--rotate", a.rotate,
	             "activation and pleas: after the permutation, also rotate the residual stream, value heads and "
	             "RoPE pairs onto REF's (orthogonal maps fitted to the activations; the function is kept)");
	cmd.add_option("--samples", a.samples, "activation and pleas: sequences of --data to use (default 256)");
	cmd.add_option("--seed", a.seed, "weight_matching: seed of the order the layers are visited in");
	cmd.add_option("--iterations", a.iterations, "weight_matching: most sweeps over the layers (default 100)");
	cmd.add_option("--out-shard-size", a.shard_size, "largest output shard (default 5GB)");
	cmd.add_option("--threads", a.threads, "activation and pleas: CPU threads (default: all cores)");
	cmd.add_flag("--force", a.force, "replace the output folder if it exists");
	cmd.add_flag("--quiet,-q", a.quiet, "print nothing but errors");
}

inline std::vector<std::string> align_words(const AlignArgs& a) {
	std::vector<std::string> w = {a.ref,
	                              a.model,
	                              a.out,
	                              "--method",
	                              a.method,
	                              "--data",
	                              a.data,
	                              "--width",
	                              std::to_string(a.width),
	                              "--samples",
	                              std::to_string(a.samples),
	                              "--ridge",
	                              fmt::format("{}", a.ridge),
	                              "--out-shard-size",
	                              a.shard_size,
	                              "--threads",
	                              std::to_string(a.threads)};
	if (a.rotate) w.push_back("--rotate");
	if (a.force) w.push_back("--force");
	if (a.quiet) w.push_back("--quiet");
	return w;
}

} // namespace weld::cli
