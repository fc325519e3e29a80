// weld align --rotate: orthogonal maps beyond permutations (nn/align_activation.h).
#include "nn/align_activation.h"

#include "nn/align_capture.h"
#include "util/error.h"

#include <fmt/format.h>

#include <cmath>

namespace weld::nn {
using namespace detail;

namespace {

// argmin over orthogonal R of ‖B Rᵀ − A‖ (rows are samples): R = V Uᵀ for Bᵀ A = U S Vᵀ.
at::Tensor procrustes(const at::Tensor& b, const at::Tensor& a) {
	const auto [u, s, vh] = at::linalg_svd(b.t().matmul(a), false);
	(void)s;
	return vh.t().matmul(u.t());
}

// Rows [first + j] and [first + j + half] of w (a matrix, or a bias as [n, 1]) rotated by φ_j.
void rotate_pair_rows(at::Tensor& w, int64_t first, const std::vector<double>& angle) {
	const auto half = static_cast<int64_t>(angle.size());
	for (int64_t j = 0; j < half; ++j) {
		const double c = std::cos(angle[static_cast<size_t>(j)]), s = std::sin(angle[static_cast<size_t>(j)]);
		const auto x = w[first + j].clone(), y = w[first + j + half].clone();
		w[first + j] = c * x - s * y;
		w[first + j + half] = s * x + c * y;
	}
}

} // namespace

RotationReport rotate_onto(LlamaModel& ref, LlamaModel& model, const std::vector<std::vector<int64_t>>& sequences) {
	const auto& c = ref.config();
	if (c.tie_word_embeddings)
		throw Error("--rotate: the embeddings are tied to lm_head, so the residual stream cannot be rotated");
	const int64_t d = c.head_dim, half = d / 2, group = c.num_attention_heads / c.num_key_value_heads;
	std::map<std::string, Side> wanted;
	for (int64_t l = 0; l < c.num_hidden_layers; ++l)
		for (const char* p : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"})
			wanted[layer_name(l, p)] = Side::Output;
	at::Tensor hidden_ref, hidden_model;
	const auto a = capture(ref, sequences, wanted, &hidden_ref);
	const auto b = capture(model, sequences, wanted, &hidden_model);
	RotationReport report;
	const auto r = procrustes(hidden_model, hidden_ref); // residual: x' = R x
	report.residual_before = (hidden_model - hidden_ref).norm().item<double>() / hidden_ref.norm().item<double>();
	report.residual_after =
	    (hidden_model.matmul(r.t()) - hidden_ref).norm().item<double>() / hidden_ref.norm().item<double>();

	at::NoGradGuard no_grad;
	std::map<std::string, at::Tensor> w;
	for (const auto& [name, t] : model.parameters())
		w[name] = t.detach().to(at::kDouble).clone();
	auto ref_norm = [&](const std::string& name) { return ref.parameter(name).detach().to(at::kDouble); };
	// A reader of the residual stream through the norm `norm`: W diag(g) Rᵀ diag(1/g_ref), and the
	// norm takes REF's weight, so that the output shares REF's norm weights and basis.
	auto reread = [&](const std::string& norm, const std::vector<std::string>& readers) {
		const auto g = w.at(norm), g_ref = ref_norm(norm);
		if (g_ref.abs().min().item<double>() < 1e-6 * g_ref.abs().max().item<double>())
			throw Error(fmt::format("--rotate: REF's {} has a weight near 0, so it cannot carry MODEL's", norm));
		for (const auto& name : readers)
			w.at(name) = (w.at(name) * g).matmul(r.t()) / g_ref;
		w.at(norm) = g_ref;
	};
	w.at("model.embed_tokens.weight") = w.at("model.embed_tokens.weight").matmul(r.t());
	for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
		auto n = [&](const char* p) { return layer_name(l, p); };
		reread(n("input_layernorm.weight"),
		       {n("self_attn.q_proj.weight"), n("self_attn.k_proj.weight"), n("self_attn.v_proj.weight")});
		reread(n("post_attention_layernorm.weight"), {n("mlp.gate_proj.weight"), n("mlp.up_proj.weight")});
		for (const char* writer : {"self_attn.o_proj.weight", "mlp.down_proj.weight"})
			w.at(n(writer)) = r.matmul(w.at(n(writer)));
		if (w.count(n("self_attn.o_proj.bias")))
			w.at(n("self_attn.o_proj.bias")) = r.matmul(w.at(n("self_attn.o_proj.bias")));
		// Per key/value group: value dims by an orthogonal A (Procrustes), q/k RoPE pairs by angles.
		const auto qa = a.at(n("self_attn.q_proj.weight")), qb = b.at(n("self_attn.q_proj.weight"));
		const auto ka = a.at(n("self_attn.k_proj.weight")), kb = b.at(n("self_attn.k_proj.weight"));
		const auto va = a.at(n("self_attn.v_proj.weight")), vb = b.at(n("self_attn.v_proj.weight"));
		auto& wq = w.at(n("self_attn.q_proj.weight"));
		auto& wk = w.at(n("self_attn.k_proj.weight"));
		auto& wv = w.at(n("self_attn.v_proj.weight"));
		auto& wo = w.at(n("self_attn.o_proj.weight"));
		for (int64_t g = 0; g < c.num_key_value_heads; ++g) {
			const auto rot = procrustes(vb.slice(1, g * d, (g + 1) * d), va.slice(1, g * d, (g + 1) * d));
			wv.slice(0, g * d, (g + 1) * d) = rot.matmul(wv.slice(0, g * d, (g + 1) * d));
			if (w.count(n("self_attn.v_proj.bias"))) {
				auto& bv = w.at(n("self_attn.v_proj.bias"));
				bv.slice(0, g * d, (g + 1) * d) = rot.matmul(bv.slice(0, g * d, (g + 1) * d));
			}
			// The angle of pair j maximizes Σ ⟨R(φ) b, a⟩ over the group's keys and queries.
			std::vector<double> angle;
			for (int64_t j = 0; j < half; ++j) {
				double dot = 0, cross = 0;
				auto add = [&](const at::Tensor& fa, const at::Tensor& fb, int64_t first) {
					const auto ax = fa.select(1, first + j), ay = fa.select(1, first + j + half);
					const auto bx = fb.select(1, first + j), by = fb.select(1, first + j + half);
					dot += (bx * ax + by * ay).sum().item<double>();
					cross += (bx * ay - by * ax).sum().item<double>();
				};
				add(ka, kb, g * d);
				for (int64_t h = g * group; h < (g + 1) * group; ++h)
					add(qa, qb, h * d);
				angle.push_back(std::atan2(cross, dot));
			}
			rotate_pair_rows(wk, g * d, angle);
			if (w.count(n("self_attn.k_proj.bias"))) {
				auto bk = w.at(n("self_attn.k_proj.bias")).unsqueeze(1);
				rotate_pair_rows(bk, g * d, angle);
			}
			for (int64_t h = g * group; h < (g + 1) * group; ++h) {
				rotate_pair_rows(wq, h * d, angle);
				if (w.count(n("self_attn.q_proj.bias"))) {
					auto bq = w.at(n("self_attn.q_proj.bias")).unsqueeze(1);
					rotate_pair_rows(bq, h * d, angle);
				}
				wo.slice(1, h * d, (h + 1) * d) = wo.slice(1, h * d, (h + 1) * d).matmul(rot.t());
			}
		}
	}
	reread("model.norm.weight", {"lm_head.weight"});
	std::map<std::string, at::Tensor> values;
	for (const auto& [name, t] : model.parameters())
		values[name] = w.at(name).to(t.scalar_type()).contiguous();
	model.replace_parameters(values);
	return report;
}

} // namespace weld::nn
