#include "align/permutation.h"

#include "io/model.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "tensor/convert.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <numeric>

namespace weld {
namespace fs = std::filesystem;
namespace {

std::vector<int64_t> iota(int64_t n) {
	std::vector<int64_t> v(static_cast<size_t>(n));
	std::iota(v.begin(), v.end(), 0);
	return v;
}

void check_one(const std::vector<int64_t>& v, int64_t n, const std::string& what) {
	if (static_cast<int64_t>(v.size()) != n)
		throw Error(fmt::format("permutation: {} has {} entries, expected {}", what, v.size(), n));
	std::vector<char> seen(static_cast<size_t>(n));
	for (int64_t x : v) {
		if (x < 0 || x >= n || seen[static_cast<size_t>(x)])
			throw Error(fmt::format("permutation: {} is not a permutation of 0..{}", what, n - 1));
		seen[static_cast<size_t>(x)] = 1;
	}
}

std::string layer_name(int64_t l, const char* rest) {
	return fmt::format("model.layers.{}.{}", l, rest);
}

// The tensors a shape implies, with their shapes.
std::vector<std::pair<std::string, std::vector<uint64_t>>> expected_tensors(const LlamaShape& s) {
	const auto h = static_cast<uint64_t>(s.hidden), inter = static_cast<uint64_t>(s.intermediate),
	           q = static_cast<uint64_t>(s.heads * s.head_dim), kv = static_cast<uint64_t>(s.kv_heads * s.head_dim),
	           vocab = static_cast<uint64_t>(s.vocab);
	std::vector<std::pair<std::string, std::vector<uint64_t>>> out;
	out.push_back({"model.embed_tokens.weight", {vocab, h}});
	for (int64_t l = 0; l < s.layers; l++) {
		out.push_back({layer_name(l, "input_layernorm.weight"), {h}});
		out.push_back({layer_name(l, "self_attn.q_proj.weight"), {q, h}});
		out.push_back({layer_name(l, "self_attn.k_proj.weight"), {kv, h}});
		out.push_back({layer_name(l, "self_attn.v_proj.weight"), {kv, h}});
		if (s.qkv_bias) {
			out.push_back({layer_name(l, "self_attn.q_proj.bias"), {q}});
			out.push_back({layer_name(l, "self_attn.k_proj.bias"), {kv}});
			out.push_back({layer_name(l, "self_attn.v_proj.bias"), {kv}});
		}
		out.push_back({layer_name(l, "self_attn.o_proj.weight"), {h, q}});
		out.push_back({layer_name(l, "post_attention_layernorm.weight"), {h}});
		out.push_back({layer_name(l, "mlp.gate_proj.weight"), {inter, h}});
		out.push_back({layer_name(l, "mlp.up_proj.weight"), {inter, h}});
		out.push_back({layer_name(l, "mlp.down_proj.weight"), {h, inter}});
	}
	out.push_back({"model.norm.weight", {h}});
	if (!s.tied_embeddings) out.push_back({"lm_head.weight", {vocab, h}});
	return out;
}

std::vector<float>& tensor(WeightMap& w, const std::string& name, size_t size) {
	const auto it = w.find(name);
	if (it == w.end()) throw Error(fmt::format("permute_weights: tensor {} is missing", name));
	if (it->second.size() != size)
		throw Error(
		    fmt::format("permute_weights: tensor {} has {} values, expected {}", name, it->second.size(), size));
	return it->second;
}

// m[r][c] ← m[rows[r]][c] of a [rows.size()][cols] matrix (a vector when cols = 1).
void gather_rows(std::vector<float>& m, const std::vector<int64_t>& rows, int64_t cols) {
	const std::vector<float> old = m;
	for (size_t r = 0; r < rows.size(); r++)
		std::copy_n(old.begin() + rows[r] * cols, cols, m.begin() + static_cast<int64_t>(r) * cols);
}

// m[r][c] ← m[r][columns[c]] of a [rows][columns.size()] matrix.
void gather_columns(std::vector<float>& m, const std::vector<int64_t>& columns) {
	const auto cols = columns.size();
	std::vector<float> row(cols);
	for (size_t first = 0; first < m.size(); first += cols) {
		for (size_t c = 0; c < cols; c++)
			row[c] = m[first + static_cast<size_t>(columns[c])];
		std::copy(row.begin(), row.end(), m.begin() + static_cast<int64_t>(first));
	}
}

} // namespace

ModelPermutation identity_permutation(const LlamaShape& shape) {
	ModelPermutation p;
	p.residual = iota(shape.hidden);
	for (int64_t l = 0; l < shape.layers; l++) {
		LayerPermutation layer;
		layer.mlp = iota(shape.intermediate);
		layer.kv_heads = iota(shape.kv_heads);
		layer.query_heads.assign(static_cast<size_t>(shape.kv_heads), iota(shape.group_size()));
		layer.value_dims.assign(static_cast<size_t>(shape.kv_heads), iota(shape.head_dim));
		p.layers.push_back(std::move(layer));
	}
	return p;
}

void check_permutation(const ModelPermutation& p, const LlamaShape& shape) {
	check_one(p.residual, shape.hidden, "residual");
	if (static_cast<int64_t>(p.layers.size()) != shape.layers)
		throw Error(fmt::format("permutation: {} layers, expected {}", p.layers.size(), shape.layers));
	for (int64_t l = 0; l < shape.layers; l++) {
		const auto& layer = p.layers[static_cast<size_t>(l)];
		check_one(layer.mlp, shape.intermediate, fmt::format("layer {} mlp", l));
		check_one(layer.kv_heads, shape.kv_heads, fmt::format("layer {} kv_heads", l));
		if (static_cast<int64_t>(layer.query_heads.size()) != shape.kv_heads ||
		    static_cast<int64_t>(layer.value_dims.size()) != shape.kv_heads)
			throw Error(fmt::format("permutation: layer {} needs query_heads and value_dims for {} key/value heads", l,
			                        shape.kv_heads));
		for (int64_t g = 0; g < shape.kv_heads; g++) {
			check_one(layer.query_heads[static_cast<size_t>(g)], shape.group_size(),
			          fmt::format("layer {} query_heads of group {}", l, g));
			check_one(layer.value_dims[static_cast<size_t>(g)], shape.head_dim,
			          fmt::format("layer {} value_dims of key/value head {}", l, g));
		}
	}
}

int64_t config_positive(const nlohmann::json& config, const char* key, int64_t fallback, const std::string& label) {
	const auto it = config.find(key);
	if (it == config.end() || it->is_null()) {
		if (fallback > 0) return fallback;
		throw Error(fmt::format("{}: config.json has no {}", label, key));
	}
	if (!it->is_number_integer() || it->get<int64_t>() <= 0)
		throw Error(fmt::format("{}: config.json: {} must be a positive integer", label, key));
	return it->get<int64_t>();
}

LlamaShape read_llama_shape(const ModelFolder& model, const std::string& label) {
	if (!model.config()) throw Error(fmt::format("{}: no config.json", label));
	const auto config = nlohmann::json::parse(model.config()->text);
	LlamaShape s;
	s.architecture = model.config()->architecture;
	if (s.architecture != "LlamaForCausalLM" && s.architecture != "MistralForCausalLM" &&
	    s.architecture != "Qwen2ForCausalLM")
		throw Error(fmt::format("{}: config.json: architecture {} cannot be aligned (Llama, Mistral and Qwen2 can)",
		                        label, s.architecture.empty() ? "(none)" : s.architecture));
	s.layers = config_positive(config, "num_hidden_layers", 0, label);
	s.hidden = config_positive(config, "hidden_size", 0, label);
	s.intermediate = config_positive(config, "intermediate_size", 0, label);
	s.heads = config_positive(config, "num_attention_heads", 0, label);
	s.kv_heads = config_positive(config, "num_key_value_heads", s.heads, label);
	s.head_dim = config_positive(config, "head_dim", s.hidden / s.heads, label);
	s.vocab = config_positive(config, "vocab_size", 0, label);
	s.tied_embeddings = model.config()->tie_word_embeddings;
	s.qkv_bias = model.find("model.layers.0.self_attn.q_proj.bias") != nullptr;
	if (s.heads % s.kv_heads != 0)
		throw Error(fmt::format("{}: config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
		                        label, s.heads, s.kv_heads));
	return s;
}

void check_same_shape(const LlamaShape& a, const std::string& label_a, const LlamaShape& b,
                      const std::string& label_b) {
	auto differ = [&](const char* field, const auto& x, const auto& y) {
		if (x != y) throw Error(fmt::format("{} and {} differ in {}: {} vs {}", label_a, label_b, field, x, y));
	};
	differ("architecture", a.architecture, b.architecture);
	differ("num_hidden_layers", a.layers, b.layers);
	differ("hidden_size", a.hidden, b.hidden);
	differ("intermediate_size", a.intermediate, b.intermediate);
	differ("num_attention_heads", a.heads, b.heads);
	differ("num_key_value_heads", a.kv_heads, b.kv_heads);
	differ("head_dim", a.head_dim, b.head_dim);
	differ("vocab_size", a.vocab, b.vocab);
	differ("tie_word_embeddings", a.tied_embeddings, b.tied_embeddings);
	differ("q/k/v biases", a.qkv_bias, b.qkv_bias);
}

WeightMap read_weights(const ModelFolder& model, const LlamaShape& shape, const std::string& label) {
	for (const auto& [name, dims] : expected_tensors(shape)) {
		const auto* t = model.find(name);
		if (!t) throw Error(fmt::format("{}: tensor {} is missing", label, name));
		if (t->info->shape != dims)
			throw Error(fmt::format("{}: tensor {} has shape [{}], config.json implies [{}]", label, name,
			                        fmt::join(t->info->shape, ", "), fmt::join(dims, ", ")));
	}
	WeightMap w;
	for (const auto& t : model.tensors()) {
		if (!dtype_is_arithmetic(t.info->dtype))
			throw Error(fmt::format("{}: tensor {} is not a float tensor", label, t.info->name));
		auto& values = w[t.info->name];
		values.resize(t.info->numel());
		convert_to_f32(t.info->dtype, t.file->data(*t.info).data(), values.data(), values.size());
	}
	return w;
}

void permute_weights(WeightMap& w, const LlamaShape& s, const ModelPermutation& p) {
	check_permutation(p, s);
	const int64_t h = s.hidden, inter = s.intermediate, d = s.head_dim, group = s.group_size();
	const auto hs = static_cast<size_t>(h), is = static_cast<size_t>(inter), vs = static_cast<size_t>(s.vocab),
	           qs = static_cast<size_t>(s.heads * d), kvs = static_cast<size_t>(s.kv_heads * d);
	// Residual: embedding and lm_head columns, norms.
	gather_columns(tensor(w, "model.embed_tokens.weight", vs * hs), p.residual);
	if (w.contains("lm_head.weight")) gather_columns(tensor(w, "lm_head.weight", vs * hs), p.residual);
	gather_rows(tensor(w, "model.norm.weight", hs), p.residual, 1);
	for (int64_t l = 0; l < s.layers; l++) {
		const auto& lp = p.layers[static_cast<size_t>(l)];
		// Rows of q (whole query heads), k (whole key/value heads) and v (heads, then dims); o's columns
		// follow q's heads and v's dims.
		std::vector<int64_t> q_rows, k_rows, v_rows, o_cols;
		for (int64_t g = 0; g < s.kv_heads; g++) {
			const int64_t old_g = lp.kv_heads[static_cast<size_t>(g)];
			const auto& dims = lp.value_dims[static_cast<size_t>(g)];
			for (int64_t t = 0; t < d; t++) {
				k_rows.push_back(old_g * d + t);
				v_rows.push_back(old_g * d + dims[static_cast<size_t>(t)]);
			}
			for (int64_t j = 0; j < group; j++) {
				const int64_t old_head = old_g * group + lp.query_heads[static_cast<size_t>(g)][static_cast<size_t>(j)];
				for (int64_t t = 0; t < d; t++) {
					q_rows.push_back(old_head * d + t);
					o_cols.push_back(old_head * d + dims[static_cast<size_t>(t)]);
				}
			}
		}
		for (const char* norm : {"input_layernorm.weight", "post_attention_layernorm.weight"})
			gather_rows(tensor(w, layer_name(l, norm), hs), p.residual, 1);
		auto& wq = tensor(w, layer_name(l, "self_attn.q_proj.weight"), qs * hs);
		auto& wk = tensor(w, layer_name(l, "self_attn.k_proj.weight"), kvs * hs);
		auto& wv = tensor(w, layer_name(l, "self_attn.v_proj.weight"), kvs * hs);
		auto& wo = tensor(w, layer_name(l, "self_attn.o_proj.weight"), hs * qs);
		for (auto* m : {&wq, &wk, &wv})
			gather_columns(*m, p.residual);
		gather_rows(wq, q_rows, h);
		gather_rows(wk, k_rows, h);
		gather_rows(wv, v_rows, h);
		gather_rows(wo, p.residual, s.heads * d);
		gather_columns(wo, o_cols);
		if (s.qkv_bias) {
			gather_rows(tensor(w, layer_name(l, "self_attn.q_proj.bias"), qs), q_rows, 1);
			gather_rows(tensor(w, layer_name(l, "self_attn.k_proj.bias"), kvs), k_rows, 1);
			gather_rows(tensor(w, layer_name(l, "self_attn.v_proj.bias"), kvs), v_rows, 1);
		}
		for (const char* name : {"mlp.gate_proj.weight", "mlp.up_proj.weight"}) {
			auto& m = tensor(w, layer_name(l, name), is * hs);
			gather_columns(m, p.residual);
			gather_rows(m, lp.mlp, h);
		}
		auto& down = tensor(w, layer_name(l, "mlp.down_proj.weight"), hs * is);
		gather_rows(down, p.residual, inter);
		gather_columns(down, lp.mlp);
	}
}

void write_weights(const ModelFolder& like, const WeightMap& w, const std::string& out, bool force,
                   uint64_t max_shard_bytes) {
	if (!like.config()) throw Error(fmt::format("{}: no config.json", like.dir().string()));
	for (const auto& [name, values] : w) {
		const auto* t = like.find(name);
		if (!t) throw Error(fmt::format("write_weights: {} has no tensor {}", like.dir().string(), name));
		if (t->info->numel() != values.size())
			throw Error(fmt::format("write_weights: tensor {} has {} values, {} has {}", name, values.size(),
			                        like.dir().string(), t->info->numel()));
	}
	write_folder_atomically(out, force, [&](const fs::path& dir) {
		std::vector<OutputTensorSpec> specs;
		for (const auto& t : like.tensors())
			specs.push_back({t.info->name, t.info->dtype, t.info->shape});
		SafetensorsWriter writer(dir, specs, max_shard_bytes);
		for (size_t i = 0; i < specs.size(); i++) {
			const auto& t = like.tensors()[i];
			const auto it = w.find(t.info->name);
			if (it == w.end()) {
				writer.write(i, t.file->data(*t.info));
				continue;
			}
			std::vector<uint8_t> bytes(t.info->nbytes());
			convert_from_f32(t.info->dtype, it->second.data(), bytes.data(), it->second.size());
			writer.write(i, bytes);
		}
		writer.finish();
		write_text_file(dir / "config.json", like.config()->text);
		copy_tokenizer_files(like.dir(), dir);
	});
}

} // namespace weld
