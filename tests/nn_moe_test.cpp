// weld moe with the runtime: mixtures of identical experts compute the dense model, the MoE
// forward against the NumPy reference's token-by-token routing (tests/nn_reference.py), the
// hidden gate rows against the reference's hidden states, and weld eval on a mixture.
#include "moe/moe_build.h"
#include "nn/llama.h"
#include "nn/moe_states.h"
#include "nn_test_util.h"
#include "nn_torch_util.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>

namespace weld {
namespace {

namespace fs = std::filesystem;
using nn::LlamaModel;

const std::vector<std::vector<int64_t>> kMoeSequences = {{256, 5, 9, 33, 2, 17, 60, 104, 101},
                                                         {256, 3, 3, 8, 40, 12, 0, 63, 21, 7, 5, 44}};

class NnMoe : public ::testing::Test {
protected:
	void SetUp() override {
		spec.layers = 3;
		spec.hidden = 32;
		spec.intermediate = 48;
		spec.heads = 4;
		spec.kv_heads = 2;
		spec.vocab = 260;
		const auto base = make_tiny_llama(spec, 1);
		write_tiny_llama(tmp / "base", spec, base);
		for (uint64_t k = 0; k < 3; ++k)
			write_tiny_llama(tmp / fmt::format("e{}", k), spec, perturb(base, 0.2f, 20 + k));
	}

	fs::path build(std::string yaml, const std::string& out, bool allow_all_same = false) {
		for (size_t at; (at = yaml.find("{dir}")) != std::string::npos;)
			yaml.replace(at, 5, tmp.path().string());
		test::write_file(tmp / (out + ".yml"), yaml);
		moe::MoeOptions options;
		options.config_path = tmp / (out + ".yml");
		options.out = tmp / out;
		options.allow_all_same = allow_all_same;
		options.seed = 5;
		moe::build_moe(options, nn::runtime_prompt_states());
		return options.out;
	}

	// Largest |weld - reference| over the logits of kMoeSequences; routes: the reference's choices.
	double difference_from_reference(const fs::path& dir, std::set<std::vector<int64_t>>* routes = nullptr) {
		const auto model = LlamaModel::load(dir);
		const auto reference = test::run_reference(dir, kMoeSequences);
		double worst = 0;
		for (size_t s = 0; s < kMoeSequences.size(); ++s) {
			const auto logits = model.forward(test::ids_tensor(kMoeSequences[s]))[0].to(at::kDouble).contiguous();
			const auto values = logits.accessor<double, 2>();
			const auto& expected = reference["logits"][s];
			for (int64_t t = 0; t < logits.size(0); ++t)
				for (int64_t v = 0; v < logits.size(1); ++v)
					worst = std::max(worst, std::abs(values[t][v] - expected[t][v].get<double>()));
			if (routes)
				for (const auto& r : reference["routes"][s])
					routes->insert(r.get<std::vector<int64_t>>());
		}
		return worst;
	}

	double difference_from_base(const fs::path& dir) {
		const auto dense = LlamaModel::load(tmp / "base"), mixture = LlamaModel::load(dir);
		double worst = 0;
		for (const auto& s : kMoeSequences)
			worst = std::max(
			    worst, test::max_difference(mixture.forward(test::ids_tensor(s)), dense.forward(test::ids_tensor(s))));
		return worst;
	}

	test::TempDir tmp;
	TinyLlamaSpec spec;
};

const char* kIdenticalExperts = R"(base_model: {dir}/base
gate_mode: hidden
experts:
  - source_model: {dir}/base
    positive_prompts: ["the cat"]
  - source_model: {dir}/base
    positive_prompts: ["12 + 7"]
  - source_model: {dir}/base
    positive_prompts: ["def f(x):"]
)";

TEST_F(NnMoe, MixtralOfIdenticalExpertsGivesTheDenseLogits) {
	// Through the command line: weld hands the hidden gate mode to weld-torch.
	test::write_file(tmp / "same.yml", [&] {
		std::string yaml = kIdenticalExperts;
		for (size_t at; (at = yaml.find("{dir}")) != std::string::npos;)
			yaml.replace(at, 5, tmp.path().string());
		return yaml;
	}());
	std::string err;
	const auto out = tmp / "mixtral";
	ASSERT_NE(test::run_weld("moe " + (tmp / "same.yml").string() + " " + out.string(), &err), 0);
	EXPECT_NE(err.find("every expert is the same model"), std::string::npos) << err;
	ASSERT_EQ(test::run_weld("moe " + (tmp / "same.yml").string() + " " + out.string() +
	                             " --i-understand-this-is-not-useful-without-training",
	                         &err),
	          0)
	    << err;
	EXPECT_EQ(LlamaModel::load(out).config().architecture, "MixtralForCausalLM");
	const double diff = difference_from_base(out);
	std::printf("max |Mixtral of identical experts - dense| (float32): %.3g\n", diff);
	EXPECT_LE(diff, 1e-5);
}

TEST_F(NnMoe, QwenMoeOfIdenticalExpertsWithASilentSharedExpertGivesTheDenseLogits) {
	// residual_scale 0 zeroes the shared expert's down projection: it adds nothing.
	const auto out = build(std::string(kIdenticalExperts) + R"(experts_per_token: 2
shared_experts:
  - source_model: {dir}/e0
    positive_prompts: ["anything"]
    residual_scale: 0
)",
	                       "qwen", true);
	EXPECT_EQ(LlamaModel::load(out).config().architecture, "Qwen2MoeForCausalLM");
	const double diff = difference_from_base(out);
	std::printf("max |Qwen2-MoE of identical experts - dense| (float32): %.3g\n", diff);
	EXPECT_LE(diff, 1e-5);
}

const char* kDistinctExperts = R"(base_model: {dir}/base
gate_mode: random
experts:
  - source_model: {dir}/e0
  - source_model: {dir}/e1
  - source_model: {dir}/e2
)";

TEST_F(NnMoe, MixtralRoutingMatchesTheReference) {
	if (!test::have_numpy()) GTEST_SKIP() << "needs /usr/bin/python3 with NumPy";
	const auto out = build(kDistinctExperts, "mixtral");
	std::set<std::vector<int64_t>> routes;
	const double diff = difference_from_reference(out, &routes);
	std::printf("max |Mixtral logit - reference| (float32): %.3g over %zu expert pairs\n", diff, routes.size());
	EXPECT_LE(diff, 1e-4);
	EXPECT_GE(routes.size(), 2u); // the tokens do not all go to the same experts
}

TEST_F(NnMoe, QwenMoeRoutingAndSharedExpertMatchTheReference) {
	if (!test::have_numpy()) GTEST_SKIP() << "needs /usr/bin/python3 with NumPy";
	const auto out = build(std::string(kDistinctExperts) + R"(architecture: qwen
shared_experts:
  - source_model: {dir}/e0
    residual_scale: 0.5
)",
	                       "qwen");
	std::set<std::vector<int64_t>> routes;
	EXPECT_LE(difference_from_reference(out, &routes), 1e-4);
	EXPECT_GE(routes.size(), 2u);
	// Without norm_topk_prob the weights are the top-2 probabilities as they are; one expert per token.
	test::edit_config(out, {{"norm_topk_prob", false}});
	EXPECT_LE(difference_from_reference(out), 1e-4);
	test::edit_config(out, {{"num_experts_per_tok", 1}});
	EXPECT_LE(difference_from_reference(out), 1e-4);
}

// mergekit's hidden rows from the reference's residual streams: per layer, the mean over the
// positive prompts of the stream entering it at the last token (mean over tokens for
// hidden_avg), minus the same over the negative prompts, normalized.
std::vector<std::vector<double>> expected_hidden_rows(const nlohmann::json& positive, const nlohmann::json& negative,
                                                      bool average, int layers) {
	auto mean_over = [&](const nlohmann::json& reference) {
		std::vector<std::vector<double>> mean(static_cast<size_t>(layers));
		const auto& prompts = reference["hidden_states"];
		for (const auto& prompt : prompts)
			for (int layer = 0; layer < layers; ++layer) {
				const auto states = prompt[static_cast<size_t>(layer)].get<std::vector<std::vector<double>>>();
				auto& m = mean[static_cast<size_t>(layer)];
				m.resize(states[0].size(), 0.0);
				for (size_t t = 0; t < states.size(); ++t)
					for (size_t i = 0; i < m.size(); ++i)
						if (average || t + 1 == states.size())
							m[i] += states[t][i] / (average ? static_cast<double>(states.size()) : 1.0) /
							        static_cast<double>(prompts.size());
			}
		return mean;
	};
	auto rows = mean_over(positive);
	if (!negative.is_null()) {
		const auto minus = mean_over(negative);
		for (size_t l = 0; l < rows.size(); ++l)
			for (size_t i = 0; i < rows[l].size(); ++i)
				rows[l][i] -= minus[l][i];
	}
	for (auto& row : rows) {
		double sq = 0;
		for (double x : row)
			sq += x * x;
		for (double& x : row)
			x /= std::sqrt(sq);
	}
	return rows;
}

std::vector<int64_t> bytes_after_bos(const std::string& text) {
	std::vector<int64_t> ids = {256};
	for (unsigned char c : text)
		ids.push_back(c);
	return ids;
}

TEST_F(NnMoe, HiddenGateRowsAreThePromptsResidualStreams) {
	if (!test::have_numpy()) GTEST_SKIP() << "needs /usr/bin/python3 with NumPy";
	for (const std::string mode : {"hidden", "hidden_avg"}) {
		const auto out = build("base_model: {dir}/base\ngate_mode: " + mode + R"(
experts:
  - source_model: {dir}/e0
    positive_prompts: ["the cat sat", "a dog"]
  - source_model: {dir}/e1
    positive_prompts: ["1 + 2 = 3"]
    negative_prompts: ["the cat sat", "x"]
)",
		                       mode);
		const auto reference = [&](const std::vector<std::string>& prompts) {
			std::vector<std::vector<int64_t>> ids;
			for (const auto& p : prompts)
				ids.push_back(bytes_after_bos(p));
			return test::run_reference(tmp / "base", ids, 0, true);
		};
		const bool average = mode == "hidden_avg";
		const auto rows0 = expected_hidden_rows(reference({"the cat sat", "a dog"}), nullptr, average, spec.layers);
		const auto rows1 =
		    expected_hidden_rows(reference({"1 + 2 = 3"}), reference({"the cat sat", "x"}), average, spec.layers);
		const auto model = test::read_model(out);
		double worst = 0;
		for (int layer = 0; layer < spec.layers; ++layer) {
			const auto& gate = model.at(fmt::format("model.layers.{}.block_sparse_moe.gate.weight", layer));
			for (size_t i = 0; i < static_cast<size_t>(spec.hidden); ++i) {
				worst = std::max(worst, std::abs(gate[i] - rows0[static_cast<size_t>(layer)][i]));
				worst = std::max(
				    worst, std::abs(gate[static_cast<size_t>(spec.hidden) + i] - rows1[static_cast<size_t>(layer)][i]));
			}
		}
		std::printf("%s: max |gate row - reference| %.3g\n", mode.c_str(), worst);
		EXPECT_LE(worst, 1e-5) << mode;
	}
}

TEST_F(NnMoe, WeldEvalRunsTheMixture) {
	const auto out = build(kIdenticalExperts, "same", true);
	test::write_file(tmp / "text.txt", "the cat sat on the mat\n12 + 7 = 19\n");
	std::string dense, mixture, err;
	ASSERT_EQ(test::run_weld("eval " + (tmp / "base").string() + " --data " + (tmp / "text.txt").string() + " --json",
	                         &err, &dense),
	          0)
	    << err;
	ASSERT_EQ(
	    test::run_weld("eval " + out.string() + " --data " + (tmp / "text.txt").string() + " --json", &err, &mixture),
	    0)
	    << err;
	const double a = nlohmann::json::parse(dense)["perplexity"], b = nlohmann::json::parse(mixture)["perplexity"];
	EXPECT_NEAR(a, b, 1e-5 * a);
}

} // namespace
} // namespace weld
