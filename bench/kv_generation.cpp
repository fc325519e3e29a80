// Greedy generation with and without the KV cache (nn/llama.h forward_cached), in tokens per
// second, on a random Llama created from a config (GQA; the same model for both):
//
//   weld_kv_generation_bench [--out DIR] [--prompt N] [--tokens N] [--records N] [--threads N]
//
// "full" re-runs the whole sequence for every generated token (weld eval before the cache);
// "cached" runs the prompt once, then one position per token. Both must pick the same tokens.
// With --out, the model and a prompt/answer file (answers of --tokens bytes, whose tokens weld
// eval's byte tokenizer generates to the end on this random model) are written for timing
// `weld eval DIR --data DIR/answers.jsonl` itself.
#include "nn/llama.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>

namespace {

using weld::nn::LlamaModel;

const char* kConfig = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 512, "intermediate_size": 1376,
  "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 512,
  "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "initializer_range": 0.05})";

at::Tensor as_tensor(const std::vector<int64_t>& ids) {
	return at::tensor(at::ArrayRef<int64_t>(ids), at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
}

std::vector<int64_t> generate_full(const LlamaModel& model, std::vector<int64_t> ids, int tokens) {
	std::vector<int64_t> out;
	for (int i = 0; i < tokens; ++i) {
		const int64_t next = model.forward(as_tensor(ids))[0][-1].argmax().item<int64_t>();
		ids.push_back(next);
		out.push_back(next);
	}
	return out;
}

std::vector<int64_t> generate_cached(const LlamaModel& model, const std::vector<int64_t>& ids, int tokens) {
	std::vector<int64_t> out;
	LlamaModel::KvCache cache;
	auto logits = model.forward_cached(as_tensor(ids), cache);
	for (int i = 0; i < tokens; ++i) {
		const int64_t next = logits[0][-1].argmax().item<int64_t>();
		out.push_back(next);
		if (i + 1 < tokens) logits = model.forward_cached(as_tensor({next}), cache);
	}
	return out;
}

} // namespace

int main(int argc, char** argv) {
	std::string out;
	int prompt = 32, tokens = 64, records = 4, threads = 0;
	for (int i = 1; i + 1 < argc; i += 2) {
		const std::string key = argv[i];
		if (key == "--out")
			out = argv[i + 1];
		else if (key == "--prompt")
			prompt = std::stoi(argv[i + 1]);
		else if (key == "--tokens")
			tokens = std::stoi(argv[i + 1]);
		else if (key == "--records")
			records = std::stoi(argv[i + 1]);
		else if (key == "--threads")
			threads = std::stoi(argv[i + 1]);
	}
	if (threads > 0) at::set_num_threads(threads);
	const auto model = LlamaModel::create(kConfig, "bench", 1);
	const at::NoGradGuard no_grad;
	double seconds[2] = {0, 0};
	for (int r = 0; r < records; ++r) {
		std::vector<int64_t> ids{256}; // BOS, then printable bytes
		for (int i = 0; i < prompt; ++i)
			ids.push_back('a' + (r * 7 + i * 3) % 26);
		std::vector<int64_t> result[2];
		for (int cached = 0; cached < 2; ++cached) {
			const auto start = std::chrono::steady_clock::now();
			result[cached] = cached ? generate_cached(model, ids, tokens) : generate_full(model, ids, tokens);
			seconds[cached] += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
		}
		if (result[0] != result[1]) {
			fmt::print(stderr, "record {}: the cached generation differs from the full one\n", r);
			return 1;
		}
		// Where weld eval's byte tokenizer would stop early: a newline (10) or EOS (257).
		const auto stop =
		    std::find_if(result[1].begin(), result[1].end(), [](int64_t t) { return t == 10 || t == 257; });
		if (stop != result[1].end())
			fmt::print("record {}: weld eval would stop after {} tokens\n", r, stop - result[1].begin() + 1);
	}
	const double generated = static_cast<double>(records) * tokens;
	fmt::print("prompt {} tokens, {} generated tokens x {} records, {} threads\n", prompt + 1, tokens, records,
	           at::get_num_threads());
	fmt::print("full forward per token: {:.1f} tokens/s\n", generated / seconds[0]);
	fmt::print("KV cache:               {:.1f} tokens/s ({:.1f}x)\n", generated / seconds[1], seconds[0] / seconds[1]);
	if (!out.empty()) {
		model.save(out);
		std::ofstream answers(out + "/answers.jsonl");
		for (int r = 0; r < records; ++r) {
			std::string p;
			for (int i = 0; i < prompt; ++i)
				p += static_cast<char>('a' + (r * 7 + i * 3) % 26);
			answers << fmt::format("{{\"prompt\": \"{}\", \"answer\": \"{}\"}}\n", p, std::string(tokens - 8, 'x'));
		}
	}
	return 0;
}
