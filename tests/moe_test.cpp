// weld moe without the runtime: the Mixtral and Qwen2-MoE layouts, cheap_embed's router rows
// against the prompts' embeddings summed by hand, the random modes, noise_scale and
// residual_scale, mergekit's architecture choice, and bad configs (one error, nothing written).
#include "moe/moe_build.h"
#include "test_util.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kBos = 256; // weld's byte tokenizer

class Moe : public ::testing::Test {
protected:
	void SetUp() override {
		spec.vocab = 260;
		base = make_tiny_llama(spec, 1);
		write_tiny_llama(tmp / "base", spec, base);
		for (int k = 0; k < 3; ++k) {
			experts.push_back(perturb(base, 0.1f, 10 + static_cast<uint64_t>(k)));
			write_tiny_llama(tmp / fmt::format("e{}", k), spec, experts.back());
		}
	}

	// The YAML with {dir} replaced by the temporary folder.
	fs::path config(std::string yaml) {
		for (size_t at; (at = yaml.find("{dir}")) != std::string::npos;)
			yaml.replace(at, 5, tmp.path().string());
		test::write_file(tmp / "moe.yml", yaml);
		return tmp / "moe.yml";
	}
	moe::MoeSummary build(const std::string& yaml, const std::string& out = "out", uint64_t seed = 0) {
		moe::MoeOptions options;
		options.config_path = config(yaml);
		options.out = tmp / out;
		options.seed = seed;
		return moe::build_moe(options, {});
	}
	// The error of building the config, after checking that nothing was left behind.
	std::string failure(const std::string& yaml) {
		const auto message = test::error_of([&] { build(yaml, "bad"); });
		EXPECT_FALSE(fs::exists(tmp / "bad"));
		for (const auto& entry : fs::directory_iterator(tmp.path()))
			EXPECT_EQ(entry.path().filename().string().find("weld-tmp"), std::string::npos) << entry.path();
		return message;
	}
	nlohmann::json output_config(const std::string& out = "out") {
		return nlohmann::json::parse(test::read_file(tmp / out / "config.json"));
	}
	// Embedding row of token id of the base model.
	std::vector<double> embedding(int64_t id) const {
		const auto tensors = test::as_map(base);
		const auto& e = tensors.at("model.embed_tokens.weight");
		return {e.begin() + id * spec.hidden, e.begin() + (id + 1) * spec.hidden};
	}

	test::TempDir tmp;
	TinyLlamaSpec spec;
	std::vector<NamedTensor> base;
	std::vector<std::vector<NamedTensor>> experts;
};

std::vector<double> normalized(std::vector<double> v) {
	double sq = 0;
	for (double x : v)
		sq += x * x;
	for (double& x : v)
		x /= std::max(std::sqrt(sq), 1e-8);
	return v;
}

const char* kCheapEmbed = R"(base_model: {dir}/base
gate_mode: cheap_embed
experts:
  - source_model: {dir}/e0
    positive_prompts: ["ab", "c"]
  - source_model: {dir}/e1
    positive_prompts: ["xyz"]
    negative_prompts: ["ab"]
)";

TEST_F(Moe, CheapEmbedRowsAreTheNormalizedSumsOfThePromptEmbeddings) {
	build(kCheapEmbed);
	// By hand: BOS then the bytes of each prompt; all tokens of all prompts summed, normalized.
	auto sum_of = [&](const std::vector<int64_t>& ids) {
		std::vector<double> s(static_cast<size_t>(spec.hidden), 0.0);
		for (int64_t id : ids)
			for (int i = 0; i < spec.hidden; ++i)
				s[static_cast<size_t>(i)] += embedding(id)[static_cast<size_t>(i)];
		return normalized(s);
	};
	const auto row0 = sum_of({kBos, 'a', 'b', kBos, 'c'});
	auto row1 = sum_of({kBos, 'x', 'y', 'z'});
	const auto negative = sum_of({kBos, 'a', 'b'});
	for (size_t i = 0; i < row1.size(); ++i)
		row1[i] -= negative[i];
	row1 = normalized(row1);

	const auto out = test::read_model(tmp / "out");
	for (int layer = 0; layer < spec.layers; ++layer) {
		const auto& gate = out.at(fmt::format("model.layers.{}.block_sparse_moe.gate.weight", layer));
		ASSERT_EQ(gate.size(), 2u * static_cast<size_t>(spec.hidden));
		for (int i = 0; i < spec.hidden; ++i) {
			EXPECT_NEAR(gate[static_cast<size_t>(i)], row0[static_cast<size_t>(i)], 1e-6);
			EXPECT_NEAR(gate[static_cast<size_t>(spec.hidden + i)], row1[static_cast<size_t>(i)], 1e-6);
		}
	}
}

// mergekit warns when a layer's rows are nearly dependent (condition number above 5).
TEST_F(Moe, NearlyIdenticalPromptsGetTheDegenerateRoutingWarning) {
	auto warned = [](const moe::MoeSummary& s) {
		return std::any_of(s.warnings.begin(), s.warnings.end(), [](const std::string& w) {
			return w.find("ALL layers have degenerate routing parameters") != std::string::npos;
		});
	};
	EXPECT_FALSE(warned(build(kCheapEmbed)));
	EXPECT_TRUE(warned(build(R"(base_model: {dir}/base
gate_mode: cheap_embed
experts:
  - source_model: {dir}/e0
    positive_prompts: ["the quick brown fox jumps"]
  - source_model: {dir}/e1
    positive_prompts: ["the quick brown fox jumped"]
)",
	                         "similar")));
}

TEST_F(Moe, MixtralTakesAttentionFromTheBaseAndEachExpertsMlp) {
	build(kCheapEmbed);
	const auto out = test::read_model(tmp / "out");
	const auto b = test::as_map(base);
	size_t copied = 0;
	for (const auto& [name, values] : b)
		if (name.find(".mlp.") == std::string::npos) {
			EXPECT_EQ(out.at(name), values) << name;
			++copied;
		}
	for (int e = 0; e < 2; ++e) {
		const auto x = test::as_map(experts[static_cast<size_t>(e)]);
		for (int layer = 0; layer < spec.layers; ++layer) {
			const auto p = fmt::format("model.layers.{}.", layer);
			const auto q = fmt::format("{}block_sparse_moe.experts.{}.", p, e);
			EXPECT_EQ(out.at(q + "w1.weight"), x.at(p + "mlp.gate_proj.weight"));
			EXPECT_EQ(out.at(q + "w2.weight"), x.at(p + "mlp.down_proj.weight"));
			EXPECT_EQ(out.at(q + "w3.weight"), x.at(p + "mlp.up_proj.weight"));
		}
	}
	// Base tensors, 3 per expert and layer, one router per layer; no dense MLP.
	EXPECT_EQ(out.size(), copied + static_cast<size_t>(spec.layers) * (2 * 3 + 1));
	for (const auto& [name, values] : out)
		EXPECT_EQ(name.find(".mlp."), std::string::npos) << name;
	const auto c = output_config();
	EXPECT_EQ(c["architectures"], nlohmann::json::array({"MixtralForCausalLM"}));
	EXPECT_EQ(c["model_type"], "mixtral");
	EXPECT_EQ(c["num_local_experts"], 2);
	EXPECT_EQ(c["num_experts_per_tok"], 2);
	EXPECT_TRUE(c["sliding_window"].is_null());
	EXPECT_EQ(c["hidden_size"], spec.hidden); // the base's keys are kept
	EXPECT_EQ(test::read_file(tmp / "out" / "mergekit_moe_config.yml"), test::read_file(tmp / "moe.yml"));
	EXPECT_TRUE(fs::exists(tmp / "out" / "tokenizer_config.json"));
}

TEST_F(Moe, QwenMoeWithASharedExpertAndZeroAttentionBiases) {
	build(std::string(kCheapEmbed) + R"(shared_experts:
  - source_model: {dir}/e2
    positive_prompts: ["q"]
    residual_scale: 0.25
dtype: bfloat16
)");
	const auto c = output_config();
	EXPECT_EQ(c["architectures"], nlohmann::json::array({"Qwen2MoeForCausalLM"}));
	EXPECT_EQ(c["model_type"], "qwen2_moe");
	EXPECT_EQ(c["num_experts"], 2);
	EXPECT_EQ(c["norm_topk_prob"], true);
	EXPECT_EQ(c["decoder_sparse_step"], 1);
	EXPECT_EQ(c["moe_intermediate_size"], spec.intermediate);
	EXPECT_EQ(c["shared_expert_intermediate_size"], spec.intermediate);
	EXPECT_EQ(c["torch_dtype"], "bfloat16");

	const ModelFolder folder(tmp / "out");
	for (const auto& t : folder.tensors())
		EXPECT_EQ(t.info->dtype, DType::BF16) << t.info->name;
	const auto out = test::read_model(tmp / "out");
	const auto shared = test::stored_values(experts[2], DType::BF16);
	const auto routed = test::stored_values(experts[1], DType::BF16);
	const auto head_dim = static_cast<size_t>(spec.hidden / spec.heads);
	for (int layer = 0; layer < spec.layers; ++layer) {
		const auto p = fmt::format("model.layers.{}.", layer);
		EXPECT_EQ(out.at(p + "mlp.experts.1.up_proj.weight"), routed.at(p + "mlp.up_proj.weight"));
		EXPECT_EQ(out.at(p + "mlp.shared_expert.gate_proj.weight"), shared.at(p + "mlp.gate_proj.weight"));
		const auto& down = out.at(p + "mlp.shared_expert.down_proj.weight");
		const auto& source = shared.at(p + "mlp.down_proj.weight");
		for (size_t i = 0; i < down.size(); ++i) // 0.25 x is exact in bfloat16
			ASSERT_EQ(down[i], 0.25f * source[i]);
		EXPECT_EQ(out.at(p + "mlp.gate.weight").size(), 2u * static_cast<size_t>(spec.hidden));
		EXPECT_EQ(out.at(p + "self_attn.q_proj.bias"), std::vector<float>(static_cast<size_t>(spec.heads) * head_dim));
		EXPECT_EQ(out.at(p + "self_attn.k_proj.bias"),
		          std::vector<float>(static_cast<size_t>(spec.kv_heads) * head_dim));
		// The shared expert's gate is its prompt's embedding row: BOS + 'q', normalized.
		auto row = embedding(kBos);
		for (size_t i = 0; i < row.size(); ++i)
			row[i] += embedding('q')[i];
		row = normalized(row);
		const auto& gate = out.at(p + "mlp.shared_expert_gate.weight");
		ASSERT_EQ(gate.size(), static_cast<size_t>(spec.hidden));
		for (size_t i = 0; i < row.size(); ++i)
			EXPECT_NEAR(gate[i], row[i], 4e-3); // bfloat16
	}
}

TEST_F(Moe, NoiseScaleAddsGaussianNoiseAndResidualScaleScalesTheDownProjection) {
	const std::string yaml = R"(base_model: {dir}/base
gate_mode: random
experts:
  - source_model: {dir}/e0
    noise_scale: 0.1
  - source_model: {dir}/e1
    residual_scale: 0.5
)";
	build(yaml, "out", 7);
	const auto out = test::read_model(tmp / "out");
	const auto e0 = test::as_map(experts[0]), e1 = test::as_map(experts[1]);
	double sum = 0, sq = 0, n = 0;
	for (int layer = 0; layer < spec.layers; ++layer) {
		const auto p = fmt::format("model.layers.{}.", layer);
		for (const auto& [source, target] : {std::pair{"gate_proj", "w1"}, {"down_proj", "w2"}, {"up_proj", "w3"}}) {
			const auto& noisy = out.at(fmt::format("{}block_sparse_moe.experts.0.{}.weight", p, target));
			const auto& clean = e0.at(fmt::format("{}mlp.{}.weight", p, source));
			for (size_t i = 0; i < noisy.size(); ++i) {
				const double d = noisy[i] - clean[i];
				sum += d, sq += d * d, n += 1;
			}
			const auto& scaled = out.at(fmt::format("{}block_sparse_moe.experts.1.{}.weight", p, target));
			const auto& plain = e1.at(fmt::format("{}mlp.{}.weight", p, source));
			for (size_t i = 0; i < plain.size(); ++i)
				ASSERT_EQ(scaled[i], std::string(source) == "down_proj" ? 0.5f * plain[i] : plain[i]);
		}
	}
	const double mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
	EXPECT_NEAR(mean, 0.0, 0.01); // 3072 draws: the standard error is 0.0018
	EXPECT_NEAR(sd, 0.1, 0.008);
	// Same seed, same bytes; another seed, other noise.
	build(yaml, "again", 7);
	build(yaml, "other", 8);
	EXPECT_EQ(test::read_file(tmp / "out/model.safetensors"), test::read_file(tmp / "again/model.safetensors"));
	EXPECT_NE(test::read_file(tmp / "out/model.safetensors"), test::read_file(tmp / "other/model.safetensors"));
}

TEST_F(Moe, RandomGatesAreStandardNormalAndUniformRandomStaysInTorchLinearsRange) {
	const std::string experts_yaml = R"(
experts:
  - source_model: {dir}/e0
  - source_model: {dir}/e1
  - source_model: {dir}/e2
)";
	build("base_model: {dir}/base\ngate_mode: random" + experts_yaml, "normal", 3);
	build("base_model: {dir}/base\ngate_mode: uniform_random" + experts_yaml, "uniform", 3);
	std::vector<float> normal, uniform;
	for (int layer = 0; layer < spec.layers; ++layer) {
		const auto name = fmt::format("model.layers.{}.block_sparse_moe.gate.weight", layer);
		const auto n = test::read_model(tmp / "normal").at(name), u = test::read_model(tmp / "uniform").at(name);
		normal.insert(normal.end(), n.begin(), n.end());
		uniform.insert(uniform.end(), u.begin(), u.end());
	}
	ASSERT_EQ(normal.size(), static_cast<size_t>(spec.layers * 3 * spec.hidden));
	double sum = 0, sq = 0;
	for (float v : normal)
		sum += v, sq += static_cast<double>(v) * v;
	const double count = static_cast<double>(normal.size());
	EXPECT_NEAR(sum / count, 0.0, 0.3); // 96 draws: 3.5 standard errors
	EXPECT_NEAR(std::sqrt(sq / count), 1.0, 0.25);
	const double bound = 1.0 / std::sqrt(static_cast<double>(spec.hidden));
	float largest = 0;
	for (float v : uniform) {
		EXPECT_LE(std::abs(v), bound);
		largest = std::max(largest, std::abs(v));
	}
	EXPECT_GT(largest, 0.8 * bound);
}

TEST_F(Moe, BadConfigsFailWithOneClearErrorAndWriteNothing) {
	const std::string two_experts = R"(
experts:
  - source_model: {dir}/e0
    positive_prompts: ["a"]
  - source_model: {dir}/e1
    positive_prompts: ["b"]
)";
	EXPECT_NE(failure("base_model: {dir}/base\ngate_mode: magic" + two_experts).find("unknown gate mode 'magic'"),
	          std::string::npos);
	EXPECT_NE(failure("gate_mode: cheap_embed" + two_experts).find("missing 'base_model'"), std::string::npos);
	EXPECT_NE(failure("base_model: {dir}/nothing\ngate_mode: cheap_embed" + two_experts).find("no such model folder"),
	          std::string::npos);

	auto wide = spec;
	wide.intermediate = 48;
	write_tiny_llama(tmp / "wide", wide, make_tiny_llama(wide, 5));
	const auto shape_error = failure(R"(base_model: {dir}/base
gate_mode: cheap_embed
experts:
  - source_model: {dir}/e0
    positive_prompts: ["a"]
  - source_model: {dir}/wide
    positive_prompts: ["b"]
)");
	EXPECT_NE(shape_error.find("experts[1]"), std::string::npos) << shape_error;
	EXPECT_NE(shape_error.find("'model.layers.0.mlp.gate_proj.weight' has shape [48, 16], but the base model's MLP "
	                           "needs [32, 16]"),
	          std::string::npos)
	    << shape_error;

	EXPECT_NE(failure("base_model: {dir}/base\nexperts_per_token: 3\ngate_mode: cheap_embed" + two_experts)
	              .find("2 experts for experts_per_token 3"),
	          std::string::npos);
	EXPECT_NE(failure(R"(base_model: {dir}/base
gate_mode: cheap_embed
experts:
  - source_model: {dir}/e0
    positive_prompts: ["a"]
  - source_model: {dir}/e1
    positive_prompts: ["a"]
)")
	              .find("prompts are the same for every expert"),
	          std::string::npos);
	EXPECT_NE(failure(R"(base_model: {dir}/base
gate_mode: cheap_embed
experts:
  - source_model: {dir}/e0
    positive_prompts: ["a"]
  - source_model: {dir}/e0
    positive_prompts: ["b"]
)")
	              .find("--i-understand-this-is-not-useful-without-training"),
	          std::string::npos);
	EXPECT_NE(failure(R"(base_model: {dir}/base
gate_mode: cheap_embed
experts:
  - source_model: {dir}/e0
    positive_prompts: ["a"]
  - source_model: {dir}/e1
)")
	              .find("experts[1]"),
	          std::string::npos);
}

TEST_F(Moe, OutputArchitectureIsChosenAsMergekitChoosesIt) {
	const std::string routed = R"(
gate_mode: random
experts:
  - source_model: {dir}/e0
  - source_model: {dir}/e1
)";
	// A shared expert rules Mixtral out; asking for it says why.
	EXPECT_NE(failure("base_model: {dir}/base\narchitecture: mixtral" + routed +
	                  "shared_experts:\n  - source_model: {dir}/e2\n")
	              .find("Mixtral needs no shared experts"),
	          std::string::npos);
	// Without prompts on the shared expert mergekit picks DeepSeek MoE, which weld does not write.
	EXPECT_NE(failure("base_model: {dir}/base" + routed + "shared_experts:\n  - source_model: {dir}/e2\n")
	              .find("would write a DeepSeek MoE"),
	          std::string::npos);
	EXPECT_NE(failure("base_model: {dir}/base\narchitecture: switch" + routed).find("starts with 'switch'"),
	          std::string::npos);
	// 'qwen' narrows to Qwen MoE and Qwen3 MoE; the Llama models fit the first.
	build("base_model: {dir}/base\narchitecture: qwen" + routed + "shared_experts:\n  - source_model: {dir}/e2\n");
	EXPECT_EQ(output_config()["architectures"][0], "Qwen2MoeForCausalLM");
}

TEST_F(Moe, CommandLineRefusesToOverwriteAndWarnsOfUnknownKeys) {
	config(std::string(kCheapEmbed) + "tokenizer_source: base\n");
	const auto out = (tmp / "cli").string();
	std::string err, text;
	ASSERT_EQ(test::run_weld("moe " + (tmp / "moe.yml").string() + " " + out, &err, &text), 0) << err;
	EXPECT_NE(text.find("Mixtral mixture of experts"), std::string::npos) << text;
	EXPECT_NE(err.find("unknown key 'tokenizer_source' ignored"), std::string::npos) << err;
	EXPECT_NE(test::run_weld("moe " + (tmp / "moe.yml").string() + " " + out, &err), 0);
	EXPECT_NE(err.find("already exists"), std::string::npos) << err;
	EXPECT_EQ(test::run_weld("moe " + (tmp / "moe.yml").string() + " " + out + " --force --quiet", &err), 0) << err;
}

} // namespace
} // namespace weld
