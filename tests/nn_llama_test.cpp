// The libtorch runtime against an independent NumPy implementation of the same equations
// (tests/nn_reference.py, float64), plus gradients, save/load and configuration errors.
#include "nn/llama.h"
#include "nn_test_util.h"
#include "nn_torch_util.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

using nn::LlamaModel;

const std::vector<std::vector<int64_t>> kSequences = {{1, 5, 9, 33, 2, 17, 60}, {3, 3, 8, 40, 12, 0, 63, 21, 7, 5, 44}};

// Largest |weld - reference| over the logits of every sequence.
double max_logit_difference(const LlamaModel& model, const nlohmann::json& reference) {
	double worst = 0;
	for (size_t s = 0; s < kSequences.size(); ++s) {
		const auto logits = model.forward(test::ids_tensor(kSequences[s])).to(at::kDouble)[0].contiguous();
		const auto values = logits.accessor<double, 2>();
		const auto& expected = reference["logits"][s];
		for (int64_t t = 0; t < logits.size(0); ++t)
			for (int64_t v = 0; v < logits.size(1); ++v)
				worst = std::max(worst, std::abs(values[t][v] - expected[t][v].get<double>()));
	}
	return worst;
}

TinyLlamaSpec gqa_spec(bool tied, DType dtype = DType::F32) {
	TinyLlamaSpec spec;
	spec.layers = 3;
	spec.hidden = 32;
	spec.intermediate = 48;
	spec.heads = 4;
	spec.kv_heads = 2;
	spec.tie_embeddings = tied;
	spec.dtype = dtype;
	return spec;
}

class NnReference : public ::testing::Test {
protected:
	void SetUp() override {
		if (!test::have_numpy()) GTEST_SKIP() << "needs /usr/bin/python3 with NumPy (python3-numpy)";
	}
	test::TempDir tmp;
};

TEST_F(NnReference, LogitsMatchUntiedGqa) {
	test::write_model(tmp.path(), gqa_spec(false));
	const auto model = LlamaModel::load(tmp.path());
	const double diff = max_logit_difference(model, test::run_reference(tmp.path(), kSequences));
	RecordProperty("max_abs_logit_difference", std::to_string(diff));
	std::printf("max |logit - reference| (untied, GQA, float32): %.3g\n", diff);
	EXPECT_LE(diff, 1e-4);
}

TEST_F(NnReference, LogitsMatchTiedBf16Weights) {
	test::write_model(tmp.path(), gqa_spec(true, DType::BF16));
	const auto model = LlamaModel::load(tmp.path());
	EXPECT_EQ(model.parameters().count("lm_head.weight"), 0u);
	const double diff = max_logit_difference(model, test::run_reference(tmp.path(), kSequences));
	std::printf("max |logit - reference| (tied, bf16 weights, float32): %.3g\n", diff);
	EXPECT_LE(diff, 1e-4);
}

// Qwen2: q/k/v biases, its own head_dim and rope_theta.
TEST_F(NnReference, LogitsMatchQwen2WithBiases) {
	auto spec = gqa_spec(false);
	auto tensors = make_tiny_llama(spec, 11);
	test::add_qkv_biases(tensors);
	write_tiny_llama(tmp.path(), spec, tensors);
	test::edit_config(tmp.path(), {{"architectures", {"Qwen2ForCausalLM"}},
	                               {"rope_theta", 1000000.0},
	                               {"sliding_window", 4},
	                               {"use_sliding_window", false}});
	const auto model = LlamaModel::load(tmp.path());
	EXPECT_TRUE(model.parameters().count("model.layers.0.self_attn.q_proj.bias"));
	const double diff = max_logit_difference(model, test::run_reference(tmp.path(), kSequences));
	std::printf("max |logit - reference| (Qwen2 biases): %.3g\n", diff);
	EXPECT_LE(diff, 1e-4);
}

// Mistral: each query sees the keys of its last sliding_window positions only.
TEST_F(NnReference, LogitsMatchMistralSlidingWindow) {
	test::write_model(tmp.path(), gqa_spec(false));
	test::edit_config(tmp.path(), {{"architectures", {"MistralForCausalLM"}}, {"sliding_window", 3}});
	const auto model = LlamaModel::load(tmp.path());
	ASSERT_EQ(model.config().sliding_window, 3);
	EXPECT_LE(max_logit_difference(model, test::run_reference(tmp.path(), kSequences)), 1e-4);
}

TEST_F(NnReference, LogLikelihoodsAndPerplexity) {
	test::write_model(tmp.path(), gqa_spec(false));
	const auto model = LlamaModel::load(tmp.path());
	const auto reference = test::run_reference(tmp.path(), kSequences);
	double nll = 0, expected_nll = 0;
	size_t tokens = 0;
	for (size_t s = 0; s < kSequences.size(); ++s) {
		const auto ids = test::ids_tensor(kSequences[s]);
		const auto ll = nn::token_log_likelihoods(model.forward(ids), ids)[0];
		ASSERT_EQ(ll.size(0), static_cast<int64_t>(kSequences[s].size() - 1));
		for (int64_t t = 0; t < ll.size(0); ++t) {
			const double expected = reference["log_likelihoods"][s][t].get<double>();
			EXPECT_NEAR(ll[t].item<double>(), expected, 1e-4);
			nll -= ll[t].item<double>();
			expected_nll -= expected;
			++tokens;
		}
	}
	EXPECT_NEAR(std::exp(nll / tokens), std::exp(expected_nll / tokens), 1e-4 * std::exp(expected_nll / tokens));
}

// A batch of two sequences gives each one's logits alone.
TEST(Nn, BatchEqualsSingleSequences) {
	test::TempDir tmp;
	test::write_model(tmp.path(), gqa_spec(false));
	const auto model = LlamaModel::load(tmp.path());
	const auto a = test::ids_tensor({4, 8, 15, 16, 23, 42}), b = test::ids_tensor({1, 2, 3, 5, 8, 13});
	const auto batch = model.forward(at::cat({a, b}, 0));
	EXPECT_TRUE(at::allclose(batch[0], model.forward(a)[0], 1e-5, 1e-6));
	EXPECT_TRUE(at::allclose(batch[1], model.forward(b)[0], 1e-5, 1e-6));
}

double loss(const LlamaModel& model, const at::Tensor& ids) {
	return -nn::token_log_likelihoods(model.forward(ids), ids).sum().item<double>();
}

// d(loss)/d(weight) from backward() against central differences, in float64.
TEST(Nn, GradientsMatchFiniteDifferences) {
	test::TempDir tmp;
	test::write_model(tmp.path(), gqa_spec(false));
	auto model = LlamaModel::load(tmp.path(), at::kDouble);
	const auto ids = test::ids_tensor(kSequences[1]);
	model.set_requires_grad(true);
	const auto l = -nn::token_log_likelihoods(model.forward(ids), ids).sum();
	l.backward();
	const std::vector<std::pair<std::string, std::vector<int64_t>>> probes = {
	    {"model.layers.1.self_attn.q_proj.weight", {3, 5}},
	    {"model.layers.0.self_attn.k_proj.weight", {9, 2}},
	    {"model.layers.2.mlp.down_proj.weight", {7, 30}},
	    {"model.layers.1.input_layernorm.weight", {4}},
	    {"model.embed_tokens.weight", {8, 1}},
	    {"lm_head.weight", {44, 17}}};
	const at::NoGradGuard no_grad;
	for (const auto& [name, index] : probes) {
		auto& p = model.parameters().at(name);
		ASSERT_TRUE(p.grad().defined()) << name;
		const auto grad = p.grad();
		const double analytic = (index.size() == 2 ? grad[index[0]][index[1]] : grad[index[0]]).item<double>();
		auto element = index.size() == 2 ? p[index[0]][index[1]] : p[index[0]];
		const double h = 1e-6, original = element.item<double>();
		element.fill_(original + h);
		const double up = loss(model, ids);
		element.fill_(original - h);
		const double down = loss(model, ids);
		element.fill_(original);
		const double numeric = (up - down) / (2 * h);
		EXPECT_NEAR(analytic, numeric, 1e-6 * std::max(1.0, std::abs(numeric))) << name;
	}
}

std::vector<std::string> folder_files(const std::filesystem::path& dir) {
	std::vector<std::string> names;
	for (const auto& e : std::filesystem::directory_iterator(dir))
		names.push_back(e.path().filename().string());
	std::sort(names.begin(), names.end());
	return names;
}

// Loading and saving gives back the same files, byte for byte, and the same logits.
void check_round_trip(const TinyLlamaSpec& spec, uint64_t max_shard_bytes) {
	test::TempDir tmp;
	write_tiny_llama(tmp / "in", spec, make_tiny_llama(spec, 5), max_shard_bytes);
	const auto model = LlamaModel::load(tmp / "in");
	model.save(tmp / "out");
	EXPECT_EQ(folder_files(tmp / "in"), folder_files(tmp / "out"));
	for (const auto& name : folder_files(tmp / "in"))
		EXPECT_EQ(test::read_file(tmp / "in" / name), test::read_file(tmp / "out" / name)) << name;
	const auto again = LlamaModel::load(tmp / "out");
	const auto ids = test::ids_tensor(kSequences[0]);
	EXPECT_TRUE(at::equal(model.forward(ids), again.forward(ids)));
}

TEST(Nn, SaveRoundTripFloat32) {
	check_round_trip(gqa_spec(false), UINT64_MAX);
}
TEST(Nn, SaveRoundTripBf16Tied) {
	check_round_trip(gqa_spec(true, DType::BF16), UINT64_MAX);
}
TEST(Nn, SaveRoundTripShards) {
	check_round_trip(gqa_spec(false), 20000);
}

TEST(Nn, SaveRefusesAFullFolder) {
	test::TempDir tmp;
	test::write_model(tmp / "in", gqa_spec(false));
	const auto model = LlamaModel::load(tmp / "in");
	EXPECT_THROW(model.save(tmp / "in"), Error);
}

std::string load_error(const std::filesystem::path& dir) {
	try {
		LlamaModel::load(dir);
	} catch (const Error& e) {
		return e.what();
	}
	return "(no error)";
}

TEST(Nn, UnsupportedArchitectureIsNamed) {
	test::TempDir tmp;
	test::write_model(tmp.path(), gqa_spec(false));
	test::edit_config(tmp.path(), {{"architectures", {"GPT2LMHeadModel"}}});
	const auto message = load_error(tmp.path());
	EXPECT_NE(message.find("'GPT2LMHeadModel'"), std::string::npos) << message;
	EXPECT_NE(message.find("config.json"), std::string::npos) << message;
}

TEST(Nn, UnsupportedConfigurationsAreErrors) {
	test::TempDir tmp;
	test::write_model(tmp.path(), gqa_spec(false));
	test::edit_config(tmp.path(), {{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}});
	EXPECT_NE(load_error(tmp.path()).find("rope_scaling"), std::string::npos);
	test::edit_config(tmp.path(), {{"rope_scaling", nullptr}, {"hidden_act", "gelu"}});
	EXPECT_NE(load_error(tmp.path()).find("hidden_act"), std::string::npos);
	test::edit_config(tmp.path(), {{"hidden_act", "silu"}, {"num_key_value_heads", 3}});
	EXPECT_NE(load_error(tmp.path()).find("key/value heads"), std::string::npos);
}

TEST(Nn, MissingOrMisshapenTensorsAreNamed) {
	test::TempDir tmp;
	auto tensors = make_tiny_llama(gqa_spec(false), 3);
	tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
	                             [](const auto& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; }),
	              tensors.end());
	write_tiny_llama(tmp.path(), gqa_spec(false), tensors);
	EXPECT_NE(load_error(tmp.path()).find("'model.layers.1.mlp.up_proj.weight' is missing"), std::string::npos);
	test::edit_config(tmp.path(), {{"intermediate_size", 40}});
	EXPECT_NE(load_error(tmp.path()).find("expected [40, 32]"), std::string::npos) << load_error(tmp.path());
}

TEST(Nn, Bfloat16ComputationIsClose) {
	test::TempDir tmp;
	test::write_model(tmp.path(), gqa_spec(false));
	const auto f32 = LlamaModel::load(tmp.path());
	const auto bf16 = LlamaModel::load(tmp.path(), at::kBFloat16);
	EXPECT_EQ(bf16.dtype(), at::kBFloat16);
	const auto ids = test::ids_tensor(kSequences[1]);
	const auto diff = (f32.forward(ids) - bf16.forward(ids).to(at::kFloat)).abs().max().item<double>();
	EXPECT_LT(diff, 0.05);
}

} // namespace
} // namespace weld
