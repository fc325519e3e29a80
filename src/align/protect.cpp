#include "align/protect.h"

#include "align/permutation.h"
#include "io/model.h"
#include "io/output_folder.h"
#include "tensor/convert.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>
#include <numbers>
#include <vector>

namespace weld {
namespace fs = std::filesystem;
namespace {

struct Attention {
	int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0;
};

Attention read_attention(const ModelFolder& model, const std::string& label) {
	if (!model.config()) throw Error(fmt::format("{}: no config.json", label));
	const auto config = nlohmann::json::parse(model.config()->text);
	const auto& arch = model.config()->architecture;
	if (arch != "LlamaForCausalLM" && arch != "MistralForCausalLM" && arch != "Qwen2ForCausalLM")
		throw Error(fmt::format("{}: architecture {} cannot be protected (Llama, Mistral and Qwen2 can)", label,
		                        arch.empty() ? "(none)" : arch));
	Attention a;
	a.layers = config_positive(config, "num_hidden_layers", 0, label);
	a.hidden = config_positive(config, "hidden_size", 0, label);
	a.heads = config_positive(config, "num_attention_heads", 0, label);
	a.kv_heads = config_positive(config, "num_key_value_heads", a.heads, label);
	a.head_dim = config_positive(config, "head_dim", a.hidden / a.heads, label);
	if (a.heads % a.kv_heads != 0)
		throw Error(fmt::format("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", label,
		                        a.heads, a.kv_heads));
	if (a.head_dim % 2 != 0) throw Error(fmt::format("{}: head_dim {} is odd: RoPE needs pairs", label, a.head_dim));
	return a;
}

// The transforms of one key/value group: per RoPE pair a scale and an angle (M), and A = U·diag(t)
// with U orthogonal, so that A⁻¹ = diag(1/t)·Uᵀ is exact to rounding.
struct GroupTransform {
	std::vector<double> scale, angle; // head_dim / 2 each
	std::vector<double> u, t;         // U row-major [d][d], t [d]
};

GroupTransform draw_transform(uint64_t seed, int64_t layer, int64_t group, int64_t d) {
	const uint64_t key = random_stream_key(seed, fmt::format("mergelock.{}.{}", layer, group), 0);
	uint64_t next = 0;
	auto uniform = [&] { return random_uniform(key, next++); };
	auto log_scale = [&] { return std::exp((2 * uniform() - 1) * std::numbers::ln2); }; // in [1/2, 2]
	GroupTransform g;
	for (int64_t j = 0; j < d / 2; j++) {
		g.scale.push_back(log_scale());
		g.angle.push_back(2 * std::numbers::pi * uniform());
	}
	// U: Gram-Schmidt on Gaussian columns (Box-Muller), in double.
	g.u.assign(static_cast<size_t>(d * d), 0.0);
	for (int64_t c = 0; c < d; c++) {
		std::vector<double> v(static_cast<size_t>(d));
		for (auto& x : v)
			x = std::sqrt(-2 * std::log(1 - uniform())) * std::cos(2 * std::numbers::pi * uniform());
		for (int pass = 0; pass < 2; pass++) // twice, for orthogonality to rounding
			for (int64_t p = 0; p < c; p++) {
				double dot = 0;
				for (int64_t r = 0; r < d; r++)
					dot += v[r] * g.u[r * d + p];
				for (int64_t r = 0; r < d; r++)
					v[r] -= dot * g.u[r * d + p];
			}
		double norm = 0;
		for (double x : v)
			norm += x * x;
		norm = std::sqrt(norm);
		for (int64_t r = 0; r < d; r++)
			g.u[r * d + c] = v[r] / norm;
		g.t.push_back(log_scale());
	}
	return g;
}

// Rows [first, first + d) of a [rows][cols] matrix (or a bias, cols = 1) through RoPE-pair scaled
// rotations: (r_j, r_{j+d/2}) ← s^power · R(φ) (r_j, r_{j+d/2}).
void rotate_pairs(std::vector<double>& m, int64_t cols, int64_t first, const GroupTransform& g, int power) {
	const int64_t half = static_cast<int64_t>(g.scale.size());
	for (int64_t j = 0; j < half; j++) {
		const double s = std::pow(g.scale[j], power), c = s * std::cos(g.angle[j]), n = s * std::sin(g.angle[j]);
		double* a = &m[(first + j) * cols];
		double* b = &m[(first + j + half) * cols];
		for (int64_t k = 0; k < cols; k++) {
			const double x = a[k], y = b[k];
			a[k] = c * x - n * y;
			b[k] = n * x + c * y;
		}
	}
}

// Rows [first, first + d) ← A · rows (A = U·diag(t)).
void mix_rows(std::vector<double>& m, int64_t cols, int64_t first, const GroupTransform& g) {
	const int64_t d = static_cast<int64_t>(g.t.size());
	std::vector<double> block(static_cast<size_t>(d * cols), 0.0);
	for (int64_t r = 0; r < d; r++)
		for (int64_t p = 0; p < d; p++) {
			const double a = g.u[r * d + p] * g.t[p];
			for (int64_t k = 0; k < cols; k++)
				block[r * cols + k] += a * m[(first + p) * cols + k];
		}
	std::copy(block.begin(), block.end(), m.begin() + first * cols);
}

// Columns [first, first + d) of a [rows][cols] matrix ← columns · A⁻¹ (A⁻¹ = diag(1/t)·Uᵀ).
void unmix_columns(std::vector<double>& m, int64_t rows, int64_t cols, int64_t first, const GroupTransform& g) {
	const int64_t d = static_cast<int64_t>(g.t.size());
	std::vector<double> out(static_cast<size_t>(d));
	for (int64_t r = 0; r < rows; r++) {
		double* row = &m[r * cols + first];
		for (int64_t c = 0; c < d; c++) {
			double sum = 0;
			for (int64_t p = 0; p < d; p++)
				sum += row[p] / g.t[p] * g.u[c * d + p];
			out[c] = sum;
		}
		std::copy(out.begin(), out.end(), row);
	}
}

std::vector<double> read_doubles(const ModelFolder::Tensor& t) {
	std::vector<float> f(t.info->numel());
	convert_to_f32(t.info->dtype, t.file->data(*t.info).data(), f.data(), f.size());
	return {f.begin(), f.end()};
}

} // namespace

void protect_model(const ProtectOptions& options) {
	const ModelFolder model(resolve_model_reference(options.model));
	const auto& label = options.model;
	const Attention a = read_attention(model, label);
	const int64_t d = a.head_dim, group_size = a.heads / a.kv_heads;
	// Transformed tensors by name, in double until written.
	std::map<std::string, std::vector<double>> changed;
	auto load = [&](const std::string& name, std::vector<uint64_t> shape, bool required) -> std::vector<double>* {
		const auto* t = model.find(name);
		if (!t) {
			if (required) throw Error(fmt::format("{}: tensor {} is missing", label, name));
			return nullptr;
		}
		if (t->info->shape != shape || !dtype_is_arithmetic(t->info->dtype))
			throw Error(
			    fmt::format("{}: tensor {} is not a float tensor of the shape config.json implies", label, name));
		return &(changed[name] = read_doubles(*t));
	};
	const auto q_rows = static_cast<uint64_t>(a.heads * d), kv_rows = static_cast<uint64_t>(a.kv_heads * d);
	const auto hidden = static_cast<uint64_t>(a.hidden);
	for (int64_t l = 0; l < a.layers; l++) {
		const auto p = fmt::format("model.layers.{}.self_attn.", l);
		auto* wq = load(p + "q_proj.weight", {q_rows, hidden}, true);
		auto* wk = load(p + "k_proj.weight", {kv_rows, hidden}, true);
		auto* wv = load(p + "v_proj.weight", {kv_rows, hidden}, true);
		auto* wo = load(p + "o_proj.weight", {hidden, q_rows}, true);
		auto* bq = load(p + "q_proj.bias", {q_rows}, false);
		auto* bk = load(p + "k_proj.bias", {kv_rows}, false);
		auto* bv = load(p + "v_proj.bias", {kv_rows}, false);
		for (int64_t g = 0; g < a.kv_heads; g++) {
			const GroupTransform t = draw_transform(options.seed, l, g, d);
			for (int64_t h = g * group_size; h < (g + 1) * group_size; h++) {
				rotate_pairs(*wq, a.hidden, h * d, t, 1);
				if (bq) rotate_pairs(*bq, 1, h * d, t, 1);
				unmix_columns(*wo, a.hidden, a.heads * d, h * d, t);
			}
			rotate_pairs(*wk, a.hidden, g * d, t, -1);
			if (bk) rotate_pairs(*bk, 1, g * d, t, -1);
			mix_rows(*wv, a.hidden, g * d, t);
			if (bv) mix_rows(*bv, 1, g * d, t);
		}
	}
	write_folder_atomically(options.out, options.force, [&](const fs::path& dir) {
		std::vector<OutputTensorSpec> specs;
		for (const auto& t : model.tensors())
			specs.push_back({t.info->name, t.info->dtype, t.info->shape});
		SafetensorsWriter writer(dir, specs, options.max_shard_bytes);
		for (size_t i = 0; i < specs.size(); i++) {
			const auto& t = model.tensors()[i];
			const auto it = changed.find(t.info->name);
			if (it == changed.end()) {
				writer.write(i, t.file->data(*t.info));
				continue;
			}
			const std::vector<float> values(it->second.begin(), it->second.end());
			std::vector<uint8_t> bytes(t.info->nbytes());
			convert_from_f32(t.info->dtype, values.data(), bytes.data(), values.size());
			writer.write(i, bytes);
		}
		writer.finish();
		write_text_file(dir / "config.json", model.config()->text);
		copy_tokenizer_files(model.dir(), dir);
	});
}

} // namespace weld
