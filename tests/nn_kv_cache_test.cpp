// Incremental decoding with LlamaModel::forward_cached: the logits of each new position, computed
// from the cached keys and values, equal those of the full forward pass over the whole sequence
// (which tests/nn_llama_test.cpp checks against the NumPy reference) within 1e-5, for Llama with
// grouped-query attention, Qwen2 with q/k/v biases, and Mistral's sliding window.
#include "nn/llama.h"
#include "nn_test_util.h"
#include "nn_torch_util.h"

#include <gtest/gtest.h>

namespace weld {
namespace {

using nn::LlamaModel;

const std::vector<int64_t> kSequence = {1, 5, 9, 33, 2, 17, 60, 3, 3, 8, 40, 12, 0, 63, 21, 7};

TinyLlamaSpec gqa_spec() {
	TinyLlamaSpec spec;
	spec.layers = 3;
	spec.hidden = 32;
	spec.intermediate = 48;
	spec.heads = 4;
	spec.kv_heads = 2;
	return spec;
}

// A prompt of `prompt` tokens in one call, then one token per call; returns the largest
// |cached - full| over every position's logits.
double max_cached_difference(const LlamaModel& model, size_t prompt) {
	const at::NoGradGuard no_grad;
	const auto full = model.forward(test::ids_tensor(kSequence))[0];
	LlamaModel::KvCache cache;
	auto logits = model.forward_cached(test::ids_tensor({kSequence.begin(), kSequence.begin() + prompt}), cache)[0];
	double worst = (logits - full.slice(0, 0, prompt)).abs().max().item<double>();
	for (size_t t = prompt; t < kSequence.size(); ++t) {
		const auto step = model.forward_cached(test::ids_tensor({kSequence[t]}), cache)[0];
		EXPECT_EQ(step.size(0), 1);
		worst = std::max(worst, (step[0] - full[static_cast<int64_t>(t)]).abs().max().item<double>());
	}
	EXPECT_EQ(cache.positions, static_cast<int64_t>(kSequence.size()));
	EXPECT_EQ(cache.keys[0].size(2), static_cast<int64_t>(kSequence.size()));
	return worst;
}

TEST(NnKvCache, LlamaGqaMatchesFullForward) {
	test::TempDir tmp;
	test::write_model(tmp.path(), gqa_spec());
	const auto model = LlamaModel::load(tmp.path());
	for (const size_t prompt : {1, 5})
		EXPECT_LE(max_cached_difference(model, prompt), 1e-5) << "prompt of " << prompt;
}

TEST(NnKvCache, Qwen2WithBiasesMatchesFullForward) {
	const auto config = R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 32, "intermediate_size": 48,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
		"rope_theta": 1000000.0, "initializer_range": 0.2})";
	auto model = LlamaModel::create(config, "qwen2", 5);
	// create() zeroes the biases: give them values, so that the cache must carry them.
	for (auto& [name, p] : model.parameters())
		if (name.ends_with(".bias")) p.copy_(at::linspace(-0.3, 0.3, p.numel()).view(p.sizes()));
	ASSERT_TRUE(model.parameters().count("model.layers.0.self_attn.k_proj.bias"));
	EXPECT_LE(max_cached_difference(model, 3), 1e-5);
}

TEST(NnKvCache, MistralSlidingWindowMatchesFullForward) {
	test::TempDir tmp;
	test::write_model(tmp.path(), gqa_spec());
	test::edit_config(tmp.path(), {{"architectures", {"MistralForCausalLM"}}, {"sliding_window", 3}});
	const auto model = LlamaModel::load(tmp.path());
	ASSERT_EQ(model.config().sliding_window, 3);
	EXPECT_LE(max_cached_difference(model, 4), 1e-5);
	// The window matters here: without it the logits would differ (so the test can fail).
	test::edit_config(tmp.path(), {{"sliding_window", nullptr}});
	const auto unwindowed = LlamaModel::load(tmp.path());
	const at::NoGradGuard no_grad;
	EXPECT_GT((unwindowed.forward(test::ids_tensor(kSequence)) - model.forward(test::ids_tensor(kSequence)))
	              .abs()
	              .max()
	              .item<double>(),
	          1e-3);
}

} // namespace
} // namespace weld
