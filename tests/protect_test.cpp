// weld protect (MergeLock): the protected model computes the same logits as the original (the
// NumPy reference forward pass of tests/nn_reference.py on both), while its attention weights
// are scrambled; the seed is the key.
#include "nn_test_util.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

namespace fs = std::filesystem;

// ‖a − b‖ / ‖a‖ over one tensor.
double relative_change(const fs::path& a, const fs::path& b, const std::string& name) {
	const auto x = test::read_model(a).at(name), y = test::read_model(b).at(name);
	double num = 0, den = 0;
	for (size_t i = 0; i < x.size(); i++) {
		num += (x[i] - y[i]) * (x[i] - y[i]);
		den += x[i] * x[i];
	}
	return std::sqrt(num / den);
}

class ProtectTest : public ::testing::Test {
protected:
	void SetUp() override {
		if (!test::have_numpy()) GTEST_SKIP() << "Debian's /usr/bin/python3 with NumPy is needed";
	}
	int protect(const std::string& model, const std::string& out, int seed, std::string* err = nullptr) {
		return test::run_weld(
		    fmt::format("protect {} {} --seed {} --quiet", (dir_ / model).string(), (dir_ / out).string(), seed), err);
	}
	test::TempDir dir_;
};

TEST_F(ProtectTest, LlamaWithGqaKeepsItsLogitsAndScramblesItsAttention) {
	const auto spec = test::gqa_spec();
	write_tiny_llama(dir_ / "model", spec, make_tiny_llama(spec, 3));
	ASSERT_EQ(protect("model", "locked", 7), 0);
	const double diff = test::max_reference_logit_difference(dir_ / "model", dir_ / "locked");
	std::printf("max |logit difference| after protect (Llama, GQA): %.3g\n", diff);
	EXPECT_LE(diff, 1e-4);
	for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"})
		EXPECT_GT(
		    relative_change(dir_ / "model", dir_ / "locked", fmt::format("model.layers.1.self_attn.{}.weight", proj)),
		    0.3)
		    << proj;
	EXPECT_EQ(relative_change(dir_ / "model", dir_ / "locked", "model.layers.1.mlp.up_proj.weight"), 0.0);
}

TEST_F(ProtectTest, Qwen2WithBiasesKeepsItsLogits) {
	const auto spec = test::gqa_spec();
	auto tensors = make_tiny_llama(spec, 5);
	test::add_qkv_biases(tensors);
	write_tiny_llama(dir_ / "qwen", spec, tensors);
	test::edit_config(dir_ / "qwen", {{"architectures", {"Qwen2ForCausalLM"}}, {"rope_theta", 1000000.0}});
	ASSERT_EQ(protect("qwen", "locked", 11), 0);
	const double diff = test::max_reference_logit_difference(dir_ / "qwen", dir_ / "locked");
	std::printf("max |logit difference| after protect (Qwen2, biases): %.3g\n", diff);
	EXPECT_LE(diff, 1e-4);
	EXPECT_GT(relative_change(dir_ / "qwen", dir_ / "locked", "model.layers.0.self_attn.k_proj.bias"), 0.1);
}

TEST_F(ProtectTest, TheSeedIsTheKey) {
	const auto spec = test::gqa_spec();
	write_tiny_llama(dir_ / "model", spec, make_tiny_llama(spec, 3));
	ASSERT_EQ(protect("model", "a", 1), 0);
	ASSERT_EQ(protect("model", "b", 1), 0);
	ASSERT_EQ(protect("model", "c", 2), 0);
	EXPECT_EQ(test::read_file(dir_ / "a" / "model.safetensors"), test::read_file(dir_ / "b" / "model.safetensors"));
	EXPECT_GT(relative_change(dir_ / "a", dir_ / "c", "model.layers.0.self_attn.q_proj.weight"), 0.3);
}

TEST_F(ProtectTest, WhatCannotBeProtectedIsOneErrorAndNothingWritten) {
	const auto spec = test::gqa_spec();
	write_tiny_llama(dir_ / "model", spec, make_tiny_llama(spec, 3));
	test::edit_config(dir_ / "model", {{"architectures", {"GPT2LMHeadModel"}}});
	std::string err;
	EXPECT_NE(protect("model", "out", 1, &err), 0);
	EXPECT_NE(err.find("architecture GPT2LMHeadModel cannot be protected"), std::string::npos) << err;
	test::edit_config(dir_ / "model", {{"architectures", {"LlamaForCausalLM"}}, {"num_key_value_heads", 3}});
	EXPECT_NE(protect("model", "out", 1, &err), 0);
	EXPECT_NE(err.find("num_attention_heads 4 is not a multiple of num_key_value_heads 3"), std::string::npos) << err;
	EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
	EXPECT_FALSE(fs::exists(dir_ / "out"));
}

} // namespace
} // namespace weld
