// weld align --method weight_matching (Git Re-Basin) and the permutations under it: a random
// function-preserving permutation keeps the logits of the NumPy reference forward pass
// (tests/nn_reference.py), weight matching undoes a permutation exactly, and aligning an
// independent model raises its cosine to the reference while keeping its logits.
#include "align/permutation.h"
#include "align/weight_matching.h"
#include "io/model.h"
#include "nn_test_util.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace weld {
namespace {

namespace fs = std::filesystem;

void write_llama(const fs::path& dir, uint64_t seed) {
	const auto spec = test::gqa_spec();
	write_tiny_llama(dir, spec, make_tiny_llama(spec, seed));
}

void write_qwen(const fs::path& dir, uint64_t seed) {
	const auto spec = test::gqa_spec();
	auto tensors = make_tiny_llama(spec, seed);
	test::add_qkv_biases(tensors);
	write_tiny_llama(dir, spec, tensors);
	test::edit_config(dir, {{"architectures", {"Qwen2ForCausalLM"}}, {"rope_theta", 1000000.0}});
}

bool is_identity(const std::vector<int64_t>& p) {
	for (size_t i = 0; i < p.size(); i++)
		if (p[i] != static_cast<int64_t>(i)) return false;
	return true;
}

// A random permutation of 0..n-1 that moves something (when n > 1).
std::vector<int64_t> shuffled(int64_t n, std::mt19937_64& rng) {
	std::vector<int64_t> p(static_cast<size_t>(n));
	std::iota(p.begin(), p.end(), 0);
	do
		std::shuffle(p.begin(), p.end(), rng);
	while (n > 1 && is_identity(p));
	return p;
}

ModelPermutation random_permutation(const LlamaShape& s, uint64_t seed) {
	std::mt19937_64 rng(seed);
	ModelPermutation p = identity_permutation(s);
	p.residual = shuffled(s.hidden, rng);
	for (auto& layer : p.layers) {
		layer.mlp = shuffled(s.intermediate, rng);
		layer.kv_heads = shuffled(s.kv_heads, rng);
		for (auto& q : layer.query_heads)
			q = shuffled(s.group_size(), rng);
		for (auto& v : layer.value_dims)
			v = shuffled(s.head_dim, rng);
	}
	return p;
}

// `from` with p applied, written to `to`; `edit` may change the weights after.
void write_permuted(const fs::path& from, const fs::path& to, const ModelPermutation& p,
                    const std::function<void(WeightMap&, const LlamaShape&)>& edit = {}) {
	const ModelFolder model(from);
	const auto shape = read_llama_shape(model, from.string());
	auto w = read_weights(model, shape, from.string());
	permute_weights(w, shape, p);
	if (edit) edit(w, shape);
	write_weights(model, w, to.string(), false, UINT64_MAX);
}

class AlignTest : public ::testing::Test {
protected:
	int align(const std::string& ref, const std::string& model, const std::string& out, std::string* err = nullptr,
	          std::string* stdout_text = nullptr, const std::string& extra = "") {
		return test::run_weld(fmt::format("align {} {} {} --method weight_matching --seed 5 {}", (dir_ / ref).string(),
		                                  (dir_ / model).string(), (dir_ / out).string(), extra),
		                      err, stdout_text);
	}
	// The cosines of the printed line, before and after.
	static std::pair<double, double> cosines(const std::string& line) {
		const auto at = line.find("cosine(REF, MODEL) ");
		EXPECT_NE(at, std::string::npos) << line;
		double before = 0, after = 0;
		std::sscanf(line.c_str() + at, "cosine(REF, MODEL) %lf before, %lf after", &before, &after);
		return {before, after};
	}
	test::TempDir dir_;
};

TEST_F(AlignTest, ARandomPermutationKeepsTheLogits) {
	if (!test::have_numpy()) GTEST_SKIP() << "Debian's /usr/bin/python3 with NumPy is needed";
	write_llama(dir_ / "llama", 3);
	write_qwen(dir_ / "qwen", 5);
	for (const char* name : {"llama", "qwen"}) {
		const ModelFolder model(dir_ / name);
		const auto shape = read_llama_shape(model, name);
		const auto p = random_permutation(shape, 17);
		// Every group moves: a permutation missing from any tensor it should touch changes the logits.
		ASSERT_FALSE(is_identity(p.residual));
		for (const auto& layer : p.layers) {
			ASSERT_FALSE(is_identity(layer.mlp));
			ASSERT_FALSE(is_identity(layer.kv_heads));
			for (const auto& q : layer.query_heads)
				ASSERT_FALSE(is_identity(q));
			for (const auto& v : layer.value_dims)
				ASSERT_FALSE(is_identity(v));
		}
		const auto out = dir_ / fmt::format("{}-permuted", name);
		write_permuted(dir_ / name, out, p);
		const double diff = test::max_reference_logit_difference(dir_ / name, out);
		std::printf("max |logit difference| after a random permutation (%s): %.3g\n", name, diff);
		EXPECT_LE(diff, 1e-4) << name;
		const auto before = test::read_model(dir_ / name), after = test::read_model(out);
		for (const auto& [tensor, values] : before)
			EXPECT_NE(values, after.at(tensor)) << name << " " << tensor;
	}
	// The check has teeth: value dims moved in v_proj but not in o_proj change the logits.
	write_permuted(dir_ / "llama", dir_ / "broken",
	               identity_permutation(read_llama_shape(ModelFolder(dir_ / "llama"), "")),
	               [](WeightMap& w, const LlamaShape& s) {
		               auto& v = w.at("model.layers.0.self_attn.v_proj.weight");
		               std::swap_ranges(v.begin(), v.begin() + s.hidden, v.begin() + s.hidden);
	               });
	const double broken = test::max_reference_logit_difference(dir_ / "llama", dir_ / "broken");
	std::printf("max |logit difference| with value dims moved in v_proj only: %.3g\n", broken);
	EXPECT_GT(broken, 1e-3);
}

TEST_F(AlignTest, WeightMatchingUndoesAPermutationExactly) {
	write_llama(dir_ / "llama", 3);
	write_qwen(dir_ / "qwen", 5);
	for (const char* name : {"llama", "qwen"}) {
		const auto shape = read_llama_shape(ModelFolder(dir_ / name), name);
		const auto permuted = fmt::format("{}-permuted", name), out = fmt::format("{}-aligned", name);
		write_permuted(dir_ / name, dir_ / permuted, random_permutation(shape, 23));
		std::string err, line;
		ASSERT_EQ(align(name, permuted, out, &err, &line), 0) << err;
		std::printf("%s: %s", name, line.c_str());
		const auto [before, after] = cosines(line);
		EXPECT_LT(before, 0.9) << line; // the RMSNorm weights (all near 1) alone give ~0.8
		EXPECT_NEAR(after, 1.0, 1e-6) << line;
		EXPECT_EQ(test::read_file(dir_ / out / "model.safetensors"), test::read_file(dir_ / name / "model.safetensors"))
		    << name;
		EXPECT_EQ(test::read_file(dir_ / out / "config.json"), test::read_file(dir_ / name / "config.json"));
	}
}

TEST_F(AlignTest, WeightMatchingAnIndependentModelRaisesTheCosineAndKeepsItsLogits) {
	if (!test::have_numpy()) GTEST_SKIP() << "Debian's /usr/bin/python3 with NumPy is needed";
	write_llama(dir_ / "ref", 3);
	write_llama(dir_ / "model", 9);
	std::string err, line;
	ASSERT_EQ(align("ref", "model", "out", &err, &line), 0) << err;
	std::printf("independent Llama: %s", line.c_str());
	const auto [before, after] = cosines(line);
	EXPECT_GT(after, before + 0.01) << line;
	const double diff = test::max_reference_logit_difference(dir_ / "model", dir_ / "out");
	std::printf("max |logit difference|, model vs its weight-matched copy: %.3g\n", diff);
	EXPECT_LE(diff, 1e-4);

	write_qwen(dir_ / "qwen-ref", 5);
	write_qwen(dir_ / "qwen-model", 13);
	ASSERT_EQ(align("qwen-ref", "qwen-model", "qwen-out", &err, &line), 0) << err;
	std::printf("independent Qwen2: %s", line.c_str());
	const auto [qwen_before, qwen_after] = cosines(line);
	EXPECT_GT(qwen_after, qwen_before + 0.01) << line;
	const double qwen_diff = test::max_reference_logit_difference(dir_ / "qwen-model", dir_ / "qwen-out");
	std::printf("max |logit difference|, Qwen2 model vs its weight-matched copy: %.3g\n", qwen_diff);
	EXPECT_LE(qwen_diff, 1e-4);
}

TEST_F(AlignTest, TheSameSeedGivesTheSameBytes) {
	write_llama(dir_ / "ref", 3);
	write_llama(dir_ / "model", 9);
	ASSERT_EQ(align("ref", "model", "a", nullptr, nullptr, "--quiet"), 0);
	ASSERT_EQ(align("ref", "model", "b", nullptr, nullptr, "--quiet"), 0);
	EXPECT_EQ(test::read_file(dir_ / "a" / "model.safetensors"), test::read_file(dir_ / "b" / "model.safetensors"));
}

TEST_F(AlignTest, BadInputIsOneErrorAndNothingWritten) {
	write_llama(dir_ / "ref", 3);
	auto expect_error = [&](const std::string& model, const std::string& message, const std::string& method = "") {
		std::string err;
		const int rc = method.empty()
		                   ? align("ref", model, "out", &err)
		                   : test::run_weld(fmt::format("align {} {} {} --method {}", (dir_ / "ref").string(),
		                                                (dir_ / model).string(), (dir_ / "out").string(), method),
		                                    &err);
		EXPECT_NE(rc, 0) << model;
		EXPECT_NE(err.find(message), std::string::npos) << err;
		EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
		EXPECT_FALSE(fs::exists(dir_ / "out")) << model;
	};
	write_llama(dir_ / "mistral", 4);
	test::edit_config(dir_ / "mistral", {{"architectures", {"MistralForCausalLM"}}});
	expect_error("mistral", "differ in architecture: LlamaForCausalLM vs MistralForCausalLM");

	auto narrow = test::gqa_spec();
	narrow.hidden = 16;
	write_tiny_llama(dir_ / "narrow", narrow, make_tiny_llama(narrow, 4));
	expect_error("narrow", "differ in hidden_size: 32 vs 16");

	auto tensors = make_tiny_llama(test::gqa_spec(), 4);
	std::erase_if(tensors, [](const NamedTensor& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; });
	write_tiny_llama(dir_ / "missing", test::gqa_spec(), tensors);
	expect_error("missing", "tensor model.layers.1.mlp.up_proj.weight is missing");

	write_llama(dir_ / "gpt2", 4);
	test::edit_config(dir_ / "gpt2", {{"architectures", {"GPT2LMHeadModel"}}});
	expect_error("gpt2", "config.json: architecture GPT2LMHeadModel cannot be aligned");
}

} // namespace
} // namespace weld
