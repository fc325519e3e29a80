// A LoRA-applied model runs in the runtime exactly as the adapter merged into the base by hand:
// `weld apply-lora` against W + (alpha/r)·B·A computed here with plain loops, compared through
// the logits the runtime computes and through `weld eval`'s perplexity.
#include "io/peft.h"
#include "nn/llama.h"
#include "nn_test_util.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>

namespace weld {
namespace {

namespace fs = std::filesystem;

TEST(NnLoraEval, AppliedAdapterGivesTheLogitsOfTheHandMergedModel) {
	test::TempDir tmp;
	TinyLlamaSpec spec;
	spec.layers = 2;
	spec.hidden = 32;
	spec.intermediate = 48;
	spec.heads = 4;
	spec.kv_heads = 2;
	spec.vocab = 260;
	auto base = make_tiny_llama(spec, 1);
	write_tiny_llama(tmp / "base", spec, base);

	// A rank-4 adapter (alpha 8: scaling 2) on q_proj, v_proj and down_proj of every layer.
	PeftAdapterConfig config;
	config.r = 4;
	config.lora_alpha = 8;
	config.target_modules = {"q_proj", "v_proj", "down_proj"};
	config.task_type = "CAUSAL_LM";
	std::map<std::string, NamedTensor*> by_name;
	for (auto& t : base)
		by_name[t.name] = &t;
	std::vector<LoraModule> modules;
	for (int layer = 0; layer < spec.layers; ++layer)
		for (const std::string module : {"self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"}) {
			const auto& weight = *by_name.at(fmt::format("model.layers.{}.{}.weight", layer, module));
			LoraModule m;
			m.name = fmt::format("model.layers.{}.{}", layer, module);
			m.rank = 4;
			m.out_features = weight.shape[0];
			m.in_features = weight.shape[1];
			for (uint64_t i = 0; i < m.rank * m.in_features; ++i)
				m.a.push_back(0.05f * static_cast<float>(std::sin(0.7 * static_cast<double>(i + 3 * layer + 1))));
			for (uint64_t i = 0; i < m.out_features * m.rank; ++i)
				m.b.push_back(0.05f * static_cast<float>(std::cos(1.3 * static_cast<double>(i + 5 * layer + 2))));
			m.scaling = 2;
			modules.push_back(std::move(m));
		}
	fs::create_directories(tmp / "adapter");
	write_peft_adapter(tmp / "adapter", config, modules, DType::F32);

	// By hand: W[o][i] += 2 · Σ_k B[o][k] A[k][i], in double, rounded once to float32.
	auto merged = base;
	for (auto& t : merged)
		for (const auto& m : modules) {
			if (t.name != m.name + ".weight") continue;
			for (uint64_t o = 0; o < m.out_features; ++o)
				for (uint64_t i = 0; i < m.in_features; ++i) {
					double update = 0;
					for (uint64_t k = 0; k < m.rank; ++k)
						update += static_cast<double>(m.b[o * m.rank + k]) * m.a[k * m.in_features + i];
					auto& w = t.values[o * m.in_features + i];
					w = static_cast<float>(w + 2.0 * update);
				}
		}
	write_tiny_llama(tmp / "hand", spec, merged);

	std::string err;
	ASSERT_EQ(test::run_weld(fmt::format("apply-lora {} {} {}", (tmp / "base").string(), (tmp / "adapter").string(),
	                                     (tmp / "applied").string()),
	                         &err),
	          0)
	    << err;

	const auto hand = nn::LlamaModel::load(tmp / "hand"), applied = nn::LlamaModel::load(tmp / "applied"),
	           plain = nn::LlamaModel::load(tmp / "base");
	const std::vector<int64_t> ids = {256, 5, 9, 33, 2, 17, 60, 104, 101, 7, 250};
	const auto input = at::tensor(at::ArrayRef<int64_t>(ids), at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
	const auto a = applied.forward(input).to(at::kDouble), h = hand.forward(input).to(at::kDouble);
	const double difference = (a - h).abs().max().item<double>();
	const double lora_effect = (h - plain.forward(input).to(at::kDouble)).abs().max().item<double>();
	std::printf("max |logits(apply-lora) - logits(by hand)| = %.3g (the adapter moves logits by %.3g)\n", difference,
	            lora_effect);
	EXPECT_LE(difference, 1e-5);
	EXPECT_GT(lora_effect, 1e-2); // the adapter matters, so the comparison means something

	// weld eval on both: the same perplexity.
	test::write_file(tmp / "text.txt", "the adapter changes q, v and down projections\nof every layer\n");
	auto perplexity = [&](const std::string& model) {
		std::string out, eval_err;
		EXPECT_EQ(
		    test::run_weld(fmt::format("eval {} --data {} --json", (tmp / model).string(), (tmp / "text.txt").string()),
		                   &eval_err, &out),
		    0)
		    << eval_err;
		return nlohmann::json::parse(out.substr(out.rfind('{', out.rfind("perplexity"))))["perplexity"].get<double>();
	};
	EXPECT_NEAR(perplexity("applied"), perplexity("hand"), 1e-5 * perplexity("hand"));
}

} // namespace
} // namespace weld
