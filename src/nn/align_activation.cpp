#include "nn/align_activation.h"

#include "io/model.h"
#include "io/output_folder.h"
#include "linalg/assignment.h"
#include "nn/align_capture.h"
#include "nn/tokenizer.h"
#include "util/error.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <map>
#include <numeric>

namespace weld::nn::detail {

namespace {
constexpr int64_t kBatch = 64;
} // namespace

std::string layer_name(int64_t layer, const char* rest) {
	return fmt::format("model.layers.{}.{}", layer, rest);
}

std::map<std::string, at::Tensor> capture(LlamaModel& model, const std::vector<std::vector<int64_t>>& sequences,
                                          const std::map<std::string, Side>& wanted, at::Tensor* hidden) {
	at::NoGradGuard no_grad;
	std::map<std::string, std::vector<at::Tensor>> parts;
	std::vector<std::vector<at::Tensor>> hidden_parts(static_cast<size_t>(model.config().num_hidden_layers));
	at::Tensor valid;
	model.set_linear_observer([&](const std::string& name, const at::Tensor& x, const at::Tensor& y) {
		const auto it = wanted.find(name);
		if (it == wanted.end()) return;
		const auto& t = it->second == Side::Input ? x : y;
		parts[name].push_back(t.index({valid}).to(at::kDouble));
	});
	for (size_t first = 0; first < sequences.size(); first += kBatch) {
		const std::vector<std::vector<int64_t>> batch(
		    sequences.begin() + static_cast<std::ptrdiff_t>(first),
		    sequences.begin() + static_cast<std::ptrdiff_t>(std::min(sequences.size(), first + kBatch)));
		const auto ids = right_padded_ids(batch);
		std::vector<int64_t> lengths;
		for (const auto& s : batch)
			lengths.push_back(static_cast<int64_t>(s.size()));
		valid = at::arange(ids.size(1)).unsqueeze(0) < at::tensor(lengths).unsqueeze(1);
		std::vector<at::Tensor> states;
		model.forward(ids, hidden ? &states : nullptr);
		for (size_t l = 0; l < states.size(); ++l)
			hidden_parts[l].push_back(states[l].index({valid}).to(at::kDouble));
	}
	model.set_linear_observer(nullptr);
	std::map<std::string, at::Tensor> out;
	for (auto& [name, list] : parts)
		out[name] = at::cat(list);
	if (hidden) {
		std::vector<at::Tensor> layers;
		for (auto& list : hidden_parts)
			layers.push_back(at::cat(list));
		*hidden = at::cat(layers);
	}
	return out;
}

// Columns scaled to mean 0 and mean square 1 (a column that never varies stays 0).
at::Tensor standardize(const at::Tensor& x) {
	const auto centered = x - x.mean(0, true);
	return centered / centered.pow(2).mean(0, true).sqrt().clamp_min(1e-12);
}

// Pearson correlation of every column of a with every column of b.
at::Tensor correlation(const at::Tensor& a, const at::Tensor& b) {
	return standardize(a).t().matmul(standardize(b)) / static_cast<double>(a.size(0));
}

} // namespace weld::nn::detail

namespace weld::nn {
namespace fs = std::filesystem;
using namespace detail;
namespace {

struct Assignment {
	std::vector<int64_t> perm;
	double value = 0;
};

Assignment assign(const at::Tensor& score) {
	const auto s = score.to(at::kDouble).contiguous();
	const int64_t n = s.size(0);
	const std::span<const double> values(s.data_ptr<double>(), static_cast<size_t>(n * n));
	Assignment a{linalg::max_weight_assignment(values, n), 0};
	for (int64_t i = 0; i < n; ++i)
		a.value += values[static_cast<size_t>(i * n + a.perm[static_cast<size_t>(i)])];
	return a;
}

double mean_diagonal(const at::Tensor& c) {
	return c.diagonal().mean().item<double>();
}

double mean_matched(const at::Tensor& c, const std::vector<int64_t>& perm) {
	double sum = 0;
	for (size_t i = 0; i < perm.size(); ++i)
		sum += c[static_cast<int64_t>(i)][perm[i]].item<double>();
	return perm.empty() ? 0 : sum / static_cast<double>(perm.size());
}

// The heads of one layer: key/value groups matched by the key dims' correlation, the best
// assignment of their value dims, and the best assignment of their query heads.
void match_heads(const LlamaConfig& c, const at::Tensor& q_ref, const at::Tensor& q_model, const at::Tensor& k_ref,
                 const at::Tensor& k_model, const at::Tensor& v_ref, const at::Tensor& v_model, bool absolute,
                 LayerPermutation& out) {
	const int64_t d = c.head_dim, kv = c.num_key_value_heads, group = c.num_attention_heads / kv;
	const double n = static_cast<double>(q_ref.size(0));
	// Per head pair, the summed correlation of dimension j with dimension j.
	auto head_scores = [&](const at::Tensor& a, const at::Tensor& b, int64_t heads) {
		return at::einsum("nhj,ngj->hg", {standardize(a).view({-1, heads, d}), standardize(b).view({-1, heads, d})}) /
		       n;
	};
	auto score = [&](const at::Tensor& t) { return absolute ? t.abs() : t; };
	const auto sq = score(head_scores(q_ref, q_model, c.num_attention_heads));
	const auto sk = score(head_scores(k_ref, k_model, kv));
	const auto cv = score(correlation(v_ref, v_model));
	std::vector<std::vector<Assignment>> queries(static_cast<size_t>(kv)), values(static_cast<size_t>(kv));
	auto group_score = at::zeros({kv, kv}, at::kDouble);
	for (int64_t ga = 0; ga < kv; ++ga)
		for (int64_t gb = 0; gb < kv; ++gb) {
			auto qa = assign(sq.slice(0, ga * group, (ga + 1) * group).slice(1, gb * group, (gb + 1) * group));
			auto va = assign(cv.slice(0, ga * d, (ga + 1) * d).slice(1, gb * d, (gb + 1) * d));
			group_score[ga][gb] = sk[ga][gb].item<double>() + qa.value + va.value;
			queries[static_cast<size_t>(ga)].push_back(std::move(qa));
			values[static_cast<size_t>(ga)].push_back(std::move(va));
		}
	out.kv_heads = assign(group_score).perm;
	out.query_heads.clear();
	out.value_dims.clear();
	for (int64_t g = 0; g < kv; ++g) {
		const auto matched = static_cast<size_t>(out.kv_heads[static_cast<size_t>(g)]);
		out.query_heads.push_back(queries[static_cast<size_t>(g)][matched].perm);
		out.value_dims.push_back(values[static_cast<size_t>(g)][matched].perm);
	}
}

} // namespace

std::vector<std::vector<int64_t>> read_alignment_sequences(const fs::path& file, const fs::path& model_dir,
                                                           const LlamaConfig& config, size_t samples,
                                                           int64_t min_tokens) {
	if (!fs::is_regular_file(file)) throw Error(fmt::format("{}: no such file", file.string()));
	std::vector<std::vector<int64_t>> out;
	const auto kind = detect_data_kind(file);
	if (kind == DataKind::TokenIds) {
		out = read_token_id_lines(file, config.vocab_size);
	} else if (kind == DataKind::PromptAnswer) {
		const ModelTokenizer tokenizer(model_dir, config.vocab_size);
		for (const auto& r : read_prompt_answer_lines(file)) {
			auto ids = tokenizer.encode(r.prompt);
			const auto answer = tokenizer.encode_plain(r.answer);
			ids.insert(ids.end(), answer.begin(), answer.end());
			out.push_back(std::move(ids));
		}
	} else {
		const ModelTokenizer tokenizer(model_dir, config.vocab_size);
		for (const auto& line : read_text_lines(file))
			out.push_back(tokenizer.encode(line));
	}
	std::erase_if(out, [](const auto& s) { return s.empty(); });
	if (out.size() > samples) out.resize(samples);
	for (auto& s : out) // cut to the model's positions, as weld eval does
		if (config.max_position_embeddings > 0 && static_cast<int64_t>(s.size()) > config.max_position_embeddings)
			s.resize(static_cast<size_t>(config.max_position_embeddings));
	int64_t tokens = 0;
	for (const auto& s : out)
		tokens += static_cast<int64_t>(s.size());
	if (tokens < min_tokens)
		throw Error(fmt::format("{}: {} tokens in {} sequences; activation statistics need at least {} (twice the "
		                        "widest layer; more data or a larger --samples)",
		                        file.string(), tokens, out.size(), min_tokens));
	return out;
}

ActivationMatch match_activations(LlamaModel& ref, LlamaModel& model,
                                  const std::vector<std::vector<int64_t>>& sequences, bool absolute) {
	auto score = [&](const at::Tensor& t) { return absolute ? t.abs() : t; };
	const auto& c = ref.config();
	std::map<std::string, Side> wanted;
	for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
		wanted[layer_name(l, "mlp.down_proj.weight")] = Side::Input;
		for (const char* p : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"})
			wanted[layer_name(l, p)] = Side::Output;
	}
	at::Tensor hidden_ref, hidden_model;
	const auto a = capture(ref, sequences, wanted, &hidden_ref);
	const auto b = capture(model, sequences, wanted, &hidden_model);

	ActivationMatch m;
	const auto residual = correlation(hidden_ref, hidden_model);
	m.permutation.residual = assign(score(residual)).perm;
	m.residual_before = mean_diagonal(residual);
	m.residual_after = mean_matched(residual, m.permutation.residual);
	for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
		LayerPermutation layer;
		const auto down = layer_name(l, "mlp.down_proj.weight");
		const auto mlp = correlation(a.at(down), b.at(down));
		layer.mlp = assign(score(mlp)).perm;
		std::vector<double> matched;
		for (size_t i = 0; i < layer.mlp.size(); ++i)
			matched.push_back(mlp[static_cast<int64_t>(i)][layer.mlp[i]].item<double>());
		m.mlp_before += mean_diagonal(mlp) / static_cast<double>(c.num_hidden_layers);
		m.mlp_after += mean_matched(mlp, layer.mlp) / static_cast<double>(c.num_hidden_layers);
		m.mlp_correlation.push_back(std::move(matched));
		auto out = [&](const char* p) { return layer_name(l, p); };
		match_heads(c, a.at(out("self_attn.q_proj.weight")), b.at(out("self_attn.q_proj.weight")),
		            a.at(out("self_attn.k_proj.weight")), b.at(out("self_attn.k_proj.weight")),
		            a.at(out("self_attn.v_proj.weight")), b.at(out("self_attn.v_proj.weight")), absolute, layer);
		m.permutation.layers.push_back(std::move(layer));
	}
	return m;
}

void permute_model(LlamaModel& model, const LlamaShape& shape, const ModelPermutation& permutation) {
	WeightMap weights;
	for (const auto& [name, t] : model.parameters()) {
		const auto f = t.detach().to(at::kFloat).contiguous();
		weights[name].assign(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
	}
	permute_weights(weights, shape, permutation);
	std::map<std::string, at::Tensor> values;
	for (const auto& [name, t] : model.parameters()) {
		auto& w = weights.at(name);
		values[name] = at::from_blob(w.data(), t.sizes(), at::kFloat).clone().to(t.scalar_type());
	}
	model.replace_parameters(values);
}

} // namespace weld::nn

namespace weld::nn {

int64_t min_alignment_tokens(const LlamaShape& shape, int64_t width) {
	return 2 * std::max({shape.hidden, shape.intermediate, width, shape.heads * shape.head_dim});
}

DataAlignReport run_data_alignment(const DataAlignJob& job) {
	const ModelFolder ref_folder(resolve_model_reference(job.ref.string())),
	    model_folder(resolve_model_reference(job.model.string()));
	const auto shape = read_llama_shape(ref_folder, job.ref.string());
	check_same_shape(shape, job.ref.string(), read_llama_shape(model_folder, job.model.string()), job.model.string());
	if (job.method == "pleas" && job.width > 2 * shape.intermediate)
		throw Error(fmt::format("--width {}: at most twice intermediate_size ({})", job.width, 2 * shape.intermediate));
	if (job.out.empty()) throw Error("weld align: no output folder");
	if (job.threads > 0) at::set_num_threads(job.threads);
	auto ref = LlamaModel::load(ref_folder.dir(), at::kFloat);
	auto model = LlamaModel::load(model_folder.dir(), at::kFloat);
	const int64_t widest = std::max({shape.hidden, shape.intermediate, job.width, shape.heads * shape.head_dim});
	DataAlignReport report;
	const auto sequences = read_alignment_sequences(job.data, ref_folder.dir(), ref.config(), job.samples, 2 * widest);
	report.sequences = static_cast<int64_t>(sequences.size());
	for (const auto& s : sequences)
		report.tokens += static_cast<int64_t>(s.size());
	report.match = match_activations(ref, model, sequences);
	if (job.rotate) {
		permute_model(model, shape, report.match.permutation);
		const auto rotation = rotate_onto(ref, model, sequences);
		report.residual_misfit_before = rotation.residual_before;
		report.residual_misfit_after = rotation.residual_after;
	}
	if (job.method == "activation" && job.rotate) {
		write_folder_atomically(job.out, job.force, [&](const fs::path& dir) { model.save(dir); });
		return report;
	}
	if (job.method == "activation") {
		auto weights = read_weights(model_folder, shape, job.model.string());
		permute_weights(weights, shape, report.match.permutation);
		write_weights(model_folder, weights, job.out.string(), job.force, job.max_shard_bytes);
		return report;
	}
	if (job.method != "pleas") throw Error(fmt::format("weld align: unknown --method {}", job.method));
	if (!job.rotate) permute_model(model, shape, report.match.permutation);
	const auto merged =
	    pleas_merge(ref, model, report.match, sequences, ref_folder.config()->text, {job.width, job.ridge});
	write_folder_atomically(job.out, job.force, [&](const fs::path& dir) {
		merged.save(dir);
		copy_tokenizer_files(ref_folder.dir(), dir);
	});
	return report;
}

} // namespace weld::nn
