// Synthetic checkpoints with real model shapes and tensor names, for the speed benchmark.
//
//   gen_checkpoints --shape small|1b|7b --out DIR [--finetunes N] [--seed S] [--shard-size BYTES]
//                   [--threads T]
//
// writes DIR/base and DIR/ft1 .. DIR/ftN: Hugging Face model folders (config.json for
// LlamaForCausalLM, a minimal tokenizer config, bfloat16 safetensors shards with an index).
//
// Values: base weights ~ N(0, 0.02²)-like (RMSNorm weights ~ 1 ± 0.02). Fine-tune i is
//   base + s · (ρ · shared + sqrt(1 − ρ²) · own_i)
// with s = 0.001 (5% of the weights' scale; 0.01 for norms), ρ = 0.5: small, dense deltas
// that are correlated across fine-tunes (correlation ρ² = 0.25) yet disagree in sign in about
// 40% of places, as real fine-tunes of one base do. Everything is drawn from counter-based
// streams keyed by (seed, tensor, 64Ki-element chunk, stream), so the bytes depend only on the
// seed, never on the thread count, and model i is the same whatever N is.
//
// Memory: one tensor's bfloat16 bytes plus a 64Ki-float scratch per thread (the largest tensor
// of the 1B shape, the embedding, is 0.5 GB in bfloat16). A folder that already holds a model
// generated with the same shape, seed and generator version (bench_stamp.txt) is kept as is.
#include "io/dtype.h"
#include "io/safetensors.h"
#include "tensor/convert.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;

namespace {

constexpr int kGeneratorVersion = 2;
constexpr uint64_t kChunk = 1u << 16;
constexpr float kBaseStd = 0.02f;
constexpr float kDeltaStd = 0.001f;
constexpr float kNormStd = 0.02f;
constexpr float kNormDeltaStd = 0.01f;
constexpr float kShared = 0.5f; // ρ

struct Shape {
	std::string name;
	uint64_t vocab, hidden, layers, intermediate, heads, kv_heads;
	bool tied;
	// config.json extras that differ between the model families
	uint64_t max_positions;
	double rope_theta;
	int bos, eos;
	bool llama3_rope;
};

const Shape kShapes[] = {
    // A small Llama (about 0.13 B parameters), for quick runs and the memory comparison.
    {"small", 32000, 1024, 8, 2816, 16, 8, true, 4096, 10000.0, 1, 2, false},
    // meta-llama/Llama-3.2-1B: tied embeddings, as the real model (no lm_head.weight).
    {"1b", 128256, 2048, 16, 8192, 32, 8, true, 131072, 500000.0, 128000, 128001, true},
    // meta-llama/Llama-2-7b-hf: untied, as the real model (lm_head.weight present).
    {"7b", 32000, 4096, 32, 11008, 32, 32, false, 4096, 10000.0, 1, 2, false},
};

struct TensorDef {
	std::string name;
	std::vector<uint64_t> shape;
	bool norm;
	uint64_t numel() const {
		uint64_t n = 1;
		for (auto d : shape)
			n *= d;
		return n;
	}
};

std::vector<TensorDef> tensor_defs(const Shape& s) {
	const uint64_t h = s.hidden, kv = s.kv_heads * (s.hidden / s.heads);
	std::vector<TensorDef> out;
	out.push_back({"model.embed_tokens.weight", {s.vocab, h}, false});
	for (uint64_t i = 0; i < s.layers; ++i) {
		const std::string p = fmt::format("model.layers.{}.", i);
		out.push_back({p + "input_layernorm.weight", {h}, true});
		out.push_back({p + "self_attn.q_proj.weight", {h, h}, false});
		out.push_back({p + "self_attn.k_proj.weight", {kv, h}, false});
		out.push_back({p + "self_attn.v_proj.weight", {kv, h}, false});
		out.push_back({p + "self_attn.o_proj.weight", {h, h}, false});
		out.push_back({p + "post_attention_layernorm.weight", {h}, true});
		out.push_back({p + "mlp.gate_proj.weight", {s.intermediate, h}, false});
		out.push_back({p + "mlp.up_proj.weight", {s.intermediate, h}, false});
		out.push_back({p + "mlp.down_proj.weight", {h, s.intermediate}, false});
	}
	out.push_back({"model.norm.weight", {h}, true});
	if (!s.tied) out.push_back({"lm_head.weight", {s.vocab, h}, false});
	return out;
}

uint64_t mix64(uint64_t z) {
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

// splitmix64 stream; one 64-bit draw gives one normal-like value (sum of four 16-bit uniforms,
// centred and scaled to unit variance).
class Stream {
public:
	Stream(uint64_t seed, uint64_t tensor, uint64_t chunk, uint64_t stream)
	    : state_(mix64(mix64(mix64(seed ^ 0x5EEDull) + tensor) + (chunk << 20 | stream))) {}
	float normalish() {
		uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
		z = mix64(z);
		const uint32_t sum = static_cast<uint32_t>(z & 0xFFFF) + static_cast<uint32_t>((z >> 16) & 0xFFFF) +
		                     static_cast<uint32_t>((z >> 32) & 0xFFFF) + static_cast<uint32_t>(z >> 48);
		// sum of four U[0, 65536): mean 131070, variance 4 · 65536² / 12
		return (static_cast<float>(sum) - 131070.0f) * (1.7320508f / 65536.0f);
	}

private:
	uint64_t state_;
};

// model 0 = base, model i >= 1 = fine-tune i.
void fill_chunk(uint64_t seed, uint64_t tensor_index, const TensorDef& t, int model, uint64_t chunk, float* out,
                uint64_t count) {
	Stream base(seed, tensor_index, chunk, 0);
	if (t.norm)
		for (uint64_t k = 0; k < count; ++k)
			out[k] = 1.0f + kNormStd * base.normalish();
	else
		for (uint64_t k = 0; k < count; ++k)
			out[k] = kBaseStd * base.normalish();
	if (model == 0) return;
	const float s = t.norm ? kNormDeltaStd : kDeltaStd;
	const float a = s * kShared, b = s * std::sqrt(1.0f - kShared * kShared);
	Stream shared(seed, tensor_index, chunk, 1);
	Stream own(seed, tensor_index, chunk, 1 + static_cast<uint64_t>(model));
	for (uint64_t k = 0; k < count; ++k)
		out[k] += a * shared.normalish() + b * own.normalish();
}

void write_text(const fs::path& path, const std::string& text) {
	std::ofstream out(path, std::ios::binary | std::ios::trunc);
	out << text;
	out.close();
	if (!out) throw std::runtime_error(path.string() + ": cannot write");
}

std::string config_json(const Shape& s) {
	nlohmann::ordered_json j;
	j["architectures"] = {"LlamaForCausalLM"};
	j["attention_bias"] = false;
	j["attention_dropout"] = 0.0;
	j["bos_token_id"] = s.bos;
	j["eos_token_id"] = s.eos;
	j["head_dim"] = s.hidden / s.heads;
	j["hidden_act"] = "silu";
	j["hidden_size"] = s.hidden;
	j["initializer_range"] = 0.02;
	j["intermediate_size"] = s.intermediate;
	j["max_position_embeddings"] = s.max_positions;
	j["mlp_bias"] = false;
	j["model_type"] = "llama";
	j["num_attention_heads"] = s.heads;
	j["num_hidden_layers"] = s.layers;
	j["num_key_value_heads"] = s.kv_heads;
	j["pretraining_tp"] = 1;
	j["rms_norm_eps"] = 1e-5;
	if (s.llama3_rope)
		j["rope_scaling"] = {{"factor", 32.0},
		                     {"high_freq_factor", 4.0},
		                     {"low_freq_factor", 1.0},
		                     {"original_max_position_embeddings", 8192},
		                     {"rope_type", "llama3"}};
	else
		j["rope_scaling"] = nullptr;
	j["rope_theta"] = s.rope_theta;
	j["tie_word_embeddings"] = s.tied;
	j["torch_dtype"] = "bfloat16";
	j["use_cache"] = true;
	j["vocab_size"] = s.vocab;
	return j.dump(2) + "\n";
}

std::string stamp_text(const Shape& s, uint64_t seed, int model, uint64_t shard_size) {
	return fmt::format("gen_checkpoints v{} shape={} seed={} model={} shard_size={}\n", kGeneratorVersion, s.name,
	                   seed, model, shard_size);
}

bool up_to_date(const fs::path& dir, const std::string& stamp) {
	std::ifstream in(dir / "bench_stamp.txt", std::ios::binary);
	if (!in) return false;
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str() == stamp;
}

void generate_model(const Shape& s, const std::vector<TensorDef>& defs, uint64_t seed, int model, const fs::path& dir,
                    uint64_t shard_size, unsigned threads) {
	const std::string stamp = stamp_text(s, seed, model, shard_size);
	if (up_to_date(dir, stamp)) {
		std::cerr << "gen_checkpoints: " << dir.string() << " is up to date\n";
		return;
	}
	fs::path tmp = dir;
	tmp += ".partial";
	fs::remove_all(tmp);
	fs::create_directories(tmp);
	write_text(tmp / "config.json", config_json(s));
	write_text(tmp / "tokenizer_config.json",
	           "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n  \"model_max_length\": " +
	               std::to_string(s.max_positions) + "\n}\n");
	write_text(tmp / "special_tokens_map.json", "{}\n");

	std::vector<weld::OutputTensorSpec> specs;
	for (const auto& d : defs)
		specs.push_back({d.name, weld::DType::BF16, d.shape});
	weld::SafetensorsWriter writer(tmp, specs, shard_size);
	std::vector<uint8_t> bytes;
	for (size_t ti = 0; ti < defs.size(); ++ti) {
		const uint64_t n = defs[ti].numel();
		bytes.resize(n * 2);
		const uint64_t chunks = (n + kChunk - 1) / kChunk;
		auto work = [&](unsigned worker) {
			std::vector<float> scratch(kChunk);
			for (uint64_t c = worker; c < chunks; c += threads) {
				const uint64_t begin = c * kChunk, count = std::min(kChunk, n - begin);
				fill_chunk(seed, ti, defs[ti], model, c, scratch.data(), count);
				weld::convert_from_f32(weld::DType::BF16, scratch.data(), bytes.data() + begin * 2, count);
			}
		};
		std::vector<std::thread> pool;
		for (unsigned w = 1; w < threads; ++w)
			pool.emplace_back(work, w);
		work(0);
		for (auto& t : pool)
			t.join();
		writer.write(ti, bytes);
	}
	writer.finish();
	write_text(tmp / "bench_stamp.txt", stamp);
	fs::remove_all(dir);
	fs::rename(tmp, dir);
	std::cerr << "gen_checkpoints: wrote " << dir.string() << "\n";
}

[[noreturn]] void usage(const std::string& why) {
	if (!why.empty()) std::cerr << "gen_checkpoints: " << why << "\n";
	std::cerr << "usage: gen_checkpoints --shape small|1b|7b --out DIR [--finetunes N (3)] [--seed S (1)]\n"
	             "                       [--shard-size BYTES (2000000000)] [--threads T (all cores)] [--print-size]\n";
	std::exit(2);
}

} // namespace

int main(int argc, char** argv) {
	try {
		std::string shape_name = "1b", out;
		int finetunes = 3;
		uint64_t seed = 1, shard_size = 2'000'000'000;
		unsigned threads = std::max(1u, std::thread::hardware_concurrency());
		bool print_size = false;
		for (int i = 1; i < argc; ++i) {
			const std::string a = argv[i];
			auto value = [&]() -> std::string {
				if (i + 1 >= argc) usage(a + " needs a value");
				return argv[++i];
			};
			if (a == "--shape") shape_name = value();
			else if (a == "--out") out = value();
			else if (a == "--finetunes") finetunes = std::stoi(value());
			else if (a == "--seed") seed = std::stoull(value());
			else if (a == "--shard-size") shard_size = std::stoull(value());
			else if (a == "--threads") threads = static_cast<unsigned>(std::max(1, std::stoi(value())));
			else if (a == "--print-size") print_size = true;
			else if (a == "-h" || a == "--help") usage("");
			else usage("unknown argument " + a);
		}
		const Shape* shape = nullptr;
		for (const auto& s : kShapes)
			if (s.name == shape_name) shape = &s;
		if (!shape) usage("unknown shape " + shape_name);
		if (finetunes < 0) usage("--finetunes must be >= 0");
		const auto defs = tensor_defs(*shape);
		uint64_t params = 0;
		for (const auto& d : defs)
			params += d.numel();
		if (print_size) { // parameters and bytes of one model, for disk-space checks
			std::cout << params << " " << params * 2 << "\n";
			return 0;
		}
		if (out.empty()) usage("--out is required");
		std::cerr << fmt::format("gen_checkpoints: shape {} ({} tensors, {} parameters, {:.2f} GB per model in "
		                         "bfloat16), base + {} fine-tunes, seed {}\n",
		                         shape->name, defs.size(), params, params * 2 / 1e9, finetunes, seed);
		fs::create_directories(out);
		for (int m = 0; m <= finetunes; ++m)
			generate_model(*shape, defs, seed, m, fs::path(out) / (m == 0 ? std::string("base") : fmt::format("ft{}", m)),
			               shard_size, threads);
		return 0;
	} catch (const std::exception& e) {
		std::cerr << "gen_checkpoints: " << e.what() << "\n";
		return 1;
	}
}
