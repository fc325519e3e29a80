#include "align/weight_matching.h"

#include "io/model.h"
#include "linalg/assignment.h"
#include "linalg/linalg.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <fmt/format.h>

#include <cmath>
#include <span>

namespace weld {
namespace {

using linalg::MatrixD;

std::string layer_name(int64_t l, const char* rest) {
	return fmt::format("model.layers.{}.{}", l, rest);
}

const std::vector<float>& get(const WeightMap& w, const std::string& name) {
	const auto it = w.find(name);
	if (it == w.end()) throw Error(fmt::format("weight matching: tensor {} is missing", name));
	return it->second;
}

// A [rows][cols] float tensor as a double matrix, its rows and columns gathered (empty: as is).
MatrixD gathered(const std::vector<float>& m, size_t cols, const std::vector<int64_t>& rows = {},
                 const std::vector<int64_t>& columns = {}) {
	const size_t r = rows.empty() ? m.size() / cols : rows.size();
	MatrixD out(r, cols);
	for (size_t i = 0; i < r; i++) {
		const float* src = &m[(rows.empty() ? i : static_cast<size_t>(rows[i])) * cols];
		double* dst = &out.data[i * cols];
		if (columns.empty())
			for (size_t c = 0; c < cols; c++)
				dst[c] = src[c];
		else
			for (size_t c = 0; c < cols; c++)
				dst[c] = src[columns[c]];
	}
	return out;
}

// The gathers of one layer's attention tensors under a permutation (as permute_weights applies
// them): rows of q, k and v, columns of o.
struct AttentionGathers {
	std::vector<int64_t> q_rows, k_rows, v_rows, o_cols;
};

AttentionGathers attention_gathers(const LlamaShape& s, const LayerPermutation& lp) {
	AttentionGathers a;
	const int64_t d = s.head_dim, group = s.group_size();
	for (int64_t g = 0; g < s.kv_heads; g++) {
		const int64_t old_g = lp.kv_heads[g];
		for (int64_t t = 0; t < d; t++) {
			a.k_rows.push_back(old_g * d + t);
			a.v_rows.push_back(old_g * d + lp.value_dims[g][t]);
		}
		for (int64_t j = 0; j < group; j++) {
			const int64_t old_head = old_g * group + lp.query_heads[g][j];
			for (int64_t t = 0; t < d; t++) {
				a.q_rows.push_back(old_head * d + t);
				a.o_cols.push_back(old_head * d + lp.value_dims[g][t]);
			}
		}
	}
	return a;
}

double assigned(const MatrixD& c, const std::vector<int64_t>& p) {
	double sum = 0;
	for (size_t i = 0; i < p.size(); i++)
		sum += c(i, static_cast<size_t>(p[i]));
	return sum;
}

// Whether `candidate` beats `current` by more than rounding (so ties never flip back and forth).
bool better(double candidate, double current) {
	return candidate > current + 1e-12 * (std::abs(candidate) + std::abs(current)) + 1e-300;
}

class Matcher {
public:
	Matcher(const WeightMap& ref, const WeightMap& model, const LlamaShape& s)
	    : ref_(ref), model_(model), s_(s), p_(identity_permutation(s)) {}

	ModelPermutation& permutation() { return p_; }

	// Each returns whether it changed the permutation.
	bool residual() {
		const auto h = static_cast<size_t>(s_.hidden);
		MatrixD c(h, h);
		// Tensors whose columns are the residual stream: C += Refᵀ · Model[rows, :].
		auto columns = [&](const std::string& name, const std::vector<int64_t>& rows) {
			linalg::add_product(c, gathered(get(ref_, name), h), true, gathered(get(model_, name), h, rows), false);
		};
		// Tensors whose rows are the residual stream: C += Ref · Model[:, cols]ᵀ.
		auto rows = [&](const std::string& name, size_t cols, const std::vector<int64_t>& gather) {
			linalg::add_product(c, gathered(get(ref_, name), cols), false,
			                    gathered(get(model_, name), cols, {}, gather), true);
		};
		columns("model.embed_tokens.weight", {});
		if (ref_.contains("lm_head.weight") && model_.contains("lm_head.weight")) columns("lm_head.weight", {});
		columns("model.norm.weight", {});
		for (int64_t l = 0; l < s_.layers; l++) {
			const auto& lp = p_.layers[l];
			const auto a = attention_gathers(s_, lp);
			columns(layer_name(l, "input_layernorm.weight"), {});
			columns(layer_name(l, "post_attention_layernorm.weight"), {});
			columns(layer_name(l, "self_attn.q_proj.weight"), a.q_rows);
			columns(layer_name(l, "self_attn.k_proj.weight"), a.k_rows);
			columns(layer_name(l, "self_attn.v_proj.weight"), a.v_rows);
			columns(layer_name(l, "mlp.gate_proj.weight"), lp.mlp);
			columns(layer_name(l, "mlp.up_proj.weight"), lp.mlp);
			rows(layer_name(l, "self_attn.o_proj.weight"), static_cast<size_t>(s_.heads * s_.head_dim), a.o_cols);
			rows(layer_name(l, "mlp.down_proj.weight"), static_cast<size_t>(s_.intermediate), lp.mlp);
		}
		return take(c, p_.residual);
	}

	bool mlp(int64_t l) {
		const auto h = static_cast<size_t>(s_.hidden), n = static_cast<size_t>(s_.intermediate);
		MatrixD c(n, n);
		for (const char* name : {"mlp.gate_proj.weight", "mlp.up_proj.weight"})
			linalg::add_product(c, gathered(get(ref_, layer_name(l, name)), h), false,
			                    gathered(get(model_, layer_name(l, name)), h, {}, p_.residual), true);
		const auto down = layer_name(l, "mlp.down_proj.weight");
		linalg::add_product(c, gathered(get(ref_, down), n), true, gathered(get(model_, down), n, p_.residual), false);
		return take(c, p_.layers[l].mlp);
	}

	bool attention(int64_t l) {
		const auto h = static_cast<size_t>(s_.hidden), d = static_cast<size_t>(s_.head_dim);
		const auto q = static_cast<size_t>(s_.heads) * d, kv = static_cast<size_t>(s_.kv_heads) * d;
		// Unit-by-unit inner products: rows of q, k, v (with their biases), columns of o.
		Products x{MatrixD(q, q), MatrixD(kv, kv), MatrixD(kv, kv), MatrixD(q, q)};
		auto rows = [&](MatrixD& c, const char* proj) {
			const auto name = layer_name(l, fmt::format("self_attn.{}.weight", proj).c_str());
			linalg::add_product(c, gathered(get(ref_, name), h), false, gathered(get(model_, name), h, {}, p_.residual),
			                    true);
			const auto bias = layer_name(l, fmt::format("self_attn.{}.bias", proj).c_str());
			if (s_.qkv_bias)
				linalg::add_product(c, gathered(get(ref_, bias), 1), false, gathered(get(model_, bias), 1), true);
		};
		rows(x.q, "q_proj");
		rows(x.k, "k_proj");
		rows(x.v, "v_proj");
		const auto o = layer_name(l, "self_attn.o_proj.weight");
		linalg::add_product(x.o, gathered(get(ref_, o), q), true, gathered(get(model_, o), q, p_.residual), false);

		auto& lp = p_.layers[l];
		const auto kvn = static_cast<size_t>(s_.kv_heads);
		double current = 0;
		for (size_t g = 0; g < kvn; g++)
			current += pair_score(x, g, static_cast<size_t>(lp.kv_heads[g]), lp.query_heads[g], lp.value_dims[g]);
		// Per candidate pair, the best inner assignment (from the current one for the current pair).
		MatrixD outer(kvn, kvn);
		std::vector<std::vector<int64_t>> best_query(kvn * kvn), best_value(kvn * kvn);
		for (size_t gr = 0; gr < kvn; gr++)
			for (size_t gm = 0; gm < kvn; gm++) {
				auto& qh = best_query[gr * kvn + gm];
				auto& vd = best_value[gr * kvn + gm];
				if (static_cast<int64_t>(gm) == lp.kv_heads[gr]) {
					qh = lp.query_heads[gr];
					vd = lp.value_dims[gr];
				} else {
					qh = identity_permutation_of(s_.group_size());
					vd = identity_permutation_of(s_.head_dim);
				}
				outer(gr, gm) = inner(x, gr, gm, qh, vd);
			}
		const auto kv_perm = linalg::max_weight_assignment(std::span<const double>(outer.data), s_.kv_heads);
		double candidate = 0;
		for (size_t g = 0; g < kvn; g++)
			candidate += pair_score(x, g, static_cast<size_t>(kv_perm[g]), best_query[g * kvn + kv_perm[g]],
			                        best_value[g * kvn + kv_perm[g]]);
		if (!better(candidate, current)) return false;
		for (size_t g = 0; g < kvn; g++) {
			lp.kv_heads[g] = kv_perm[g];
			lp.query_heads[g] = best_query[g * kvn + kv_perm[g]];
			lp.value_dims[g] = best_value[g * kvn + kv_perm[g]];
		}
		return true;
	}

private:
	struct Products {
		MatrixD q, k, v, o;
	};

	static std::vector<int64_t> identity_permutation_of(int64_t n) {
		std::vector<int64_t> v(static_cast<size_t>(n));
		for (int64_t i = 0; i < n; i++)
			v[i] = i;
		return v;
	}

	// The assignment of c if it beats p's value; whether p changed.
	static bool take(const MatrixD& c, std::vector<int64_t>& p) {
		const auto candidate =
		    linalg::max_weight_assignment(std::span<const double>(c.data), static_cast<int64_t>(c.rows));
		if (candidate == p || !better(assigned(c, candidate), assigned(c, p))) return false;
		p = candidate;
		return true;
	}

	// ⟨ref, model⟩ over ref kv head gr's tensors and model kv head gm's, with query heads qh and value
	// dims vd (ref index → model index within the pair).
	double pair_score(const Products& x, size_t gr, size_t gm, const std::vector<int64_t>& qh,
	                  const std::vector<int64_t>& vd) const {
		const auto d = static_cast<size_t>(s_.head_dim), group = static_cast<size_t>(s_.group_size());
		double sum = 0;
		for (size_t t = 0; t < d; t++) {
			sum += x.k(gr * d + t, gm * d + t);
			sum += x.v(gr * d + t, gm * d + static_cast<size_t>(vd[t]));
		}
		for (size_t j = 0; j < group; j++) {
			const size_t a = (gr * group + j) * d, b = (gm * group + static_cast<size_t>(qh[j])) * d;
			for (size_t t = 0; t < d; t++) {
				sum += x.q(a + t, b + t);
				sum += x.o(a + t, b + static_cast<size_t>(vd[t]));
			}
		}
		return sum;
	}

	// The best query heads and value dims of one pair, alternating the two assignments (each exact
	// given the other) from qh and vd until neither changes; returns the pair's score.
	double inner(const Products& x, size_t gr, size_t gm, std::vector<int64_t>& qh, std::vector<int64_t>& vd) const {
		const auto d = static_cast<size_t>(s_.head_dim), group = static_cast<size_t>(s_.group_size());
		for (int round = 0; round < 50; round++) {
			MatrixD values(d, d);
			for (size_t t = 0; t < d; t++)
				for (size_t u = 0; u < d; u++) {
					double sum = x.v(gr * d + t, gm * d + u);
					for (size_t j = 0; j < group; j++)
						sum += x.o((gr * group + j) * d + t, (gm * group + static_cast<size_t>(qh[j])) * d + u);
					values(t, u) = sum;
				}
			bool changed = take(values, vd);
			MatrixD queries(group, group);
			for (size_t j = 0; j < group; j++)
				for (size_t k = 0; k < group; k++) {
					double sum = 0;
					for (size_t t = 0; t < d; t++) {
						sum += x.q((gr * group + j) * d + t, (gm * group + k) * d + t);
						sum += x.o((gr * group + j) * d + t, (gm * group + k) * d + static_cast<size_t>(vd[t]));
					}
					queries(j, k) = sum;
				}
			changed = take(queries, qh) || changed;
			if (!changed) break;
		}
		return pair_score(x, gr, gm, qh, vd);
	}

	const WeightMap& ref_;
	const WeightMap& model_;
	const LlamaShape& s_;
	ModelPermutation p_;
};

} // namespace

WeightMatchingResult weight_matching(const WeightMap& ref, const WeightMap& model, const LlamaShape& shape,
                                     const WeightMatchingOptions& options) {
	if (options.max_iterations < 1)
		throw Error(fmt::format("weight matching: iterations must be at least 1, not {}", options.max_iterations));
	Matcher m(ref, model, shape);
	// Groups: -1 the residual stream, 2l layer l's MLP, 2l + 1 layer l's attention heads.
	std::vector<int64_t> groups = {-1};
	for (int64_t l = 0; l < shape.layers; l++) {
		groups.push_back(2 * l);
		groups.push_back(2 * l + 1);
	}
	const uint64_t key = random_stream_key(options.seed, "weight_matching.order", 0);
	uint64_t draws = 0;
	WeightMatchingResult result;
	while (result.iterations < options.max_iterations) {
		result.iterations++;
		for (size_t i = groups.size(); i > 1; i--) { // Fisher–Yates from the seed's stream
			const auto j = std::min(i - 1, static_cast<size_t>(random_uniform(key, draws++) * static_cast<double>(i)));
			std::swap(groups[i - 1], groups[j]);
		}
		bool changed = false;
		for (int64_t g : groups)
			if (g < 0)
				changed = m.residual() || changed;
			else if (g % 2 == 0)
				changed = m.mlp(g / 2) || changed;
			else
				changed = m.attention(g / 2) || changed;
		if (!changed) break;
	}
	result.permutation = std::move(m.permutation());
	return result;
}

double weight_cosine(const WeightMap& a, const WeightMap& b) {
	double dot = 0, aa = 0, bb = 0;
	for (const auto& [name, x] : a) {
		const auto it = b.find(name);
		if (it == b.end() || it->second.size() != x.size()) continue;
		for (size_t i = 0; i < x.size(); i++) {
			const double p = x[i], q = it->second[i];
			dot += p * q;
			aa += p * p;
			bb += q * q;
		}
	}
	return aa > 0 && bb > 0 ? dot / std::sqrt(aa * bb) : 0.0;
}

AlignReport align_by_weight_matching(const AlignOptions& options) {
	const ModelFolder ref(resolve_model_reference(options.ref));
	const ModelFolder model(resolve_model_reference(options.model));
	const auto ref_shape = read_llama_shape(ref, options.ref);
	const auto shape = read_llama_shape(model, options.model);
	check_same_shape(ref_shape, options.ref, shape, options.model);
	const auto ref_weights = read_weights(ref, ref_shape, options.ref);
	auto weights = read_weights(model, shape, options.model);
	AlignReport report;
	report.cosine_before = weight_cosine(ref_weights, weights);
	const auto result = weight_matching(ref_weights, weights, shape, options.matching);
	report.iterations = result.iterations;
	permute_weights(weights, shape, result.permutation);
	report.cosine_after = weight_cosine(ref_weights, weights);
	write_weights(model, weights, options.out, options.force, options.max_shard_bytes);
	return report;
}

} // namespace weld
