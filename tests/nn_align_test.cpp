// weld align --method activation|pleas and the zipit merge method (libtorch): activation
// matching finds a hidden permutation exactly and keeps a model's function; PLeaS of a model with
// a permuted copy of itself is the model; PLeaS fits the two models' mean output better than
// plain averaging, at any width; zipit is activation alignment followed by a linear merge.
#include "align/permutation.h"
#include "io/model.h"
#include "nn/llama.h"
#include "nn_test_util.h"
#include "nn_torch_util.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <numeric>
#include <random>

namespace weld {
namespace {

TinyLlamaSpec align_spec() {
	TinyLlamaSpec spec;
	spec.layers = 2;
	spec.hidden = 32;
	spec.intermediate = 64;
	spec.heads = 4;
	spec.kv_heads = 2;
	spec.vocab = 64;
	return spec;
}

std::vector<std::vector<int64_t>> token_sequences(size_t count, size_t length, uint64_t seed) {
	std::mt19937_64 rng(seed);
	std::vector<std::vector<int64_t>> out(count);
	for (auto& s : out)
		for (size_t t = 0; t < length; ++t)
			s.push_back(static_cast<int64_t>(rng() % 64));
	return out;
}

void write_token_data(const std::filesystem::path& file, const std::vector<std::vector<int64_t>>& sequences) {
	std::string text;
	for (const auto& s : sequences)
		text += nlohmann::json{{"input_ids", s}}.dump() + "\n";
	test::write_file(file, text);
}

std::vector<int64_t> shuffled(int64_t n, std::mt19937_64& rng) {
	std::vector<int64_t> p(static_cast<size_t>(n));
	std::iota(p.begin(), p.end(), 0);
	std::shuffle(p.begin(), p.end(), rng);
	return p;
}

// A random permutation of every group.
ModelPermutation random_permutation(const LlamaShape& s, uint64_t seed) {
	std::mt19937_64 rng(seed);
	ModelPermutation p;
	p.residual = shuffled(s.hidden, rng);
	for (int64_t l = 0; l < s.layers; ++l) {
		LayerPermutation layer;
		layer.mlp = shuffled(s.intermediate, rng);
		layer.kv_heads = shuffled(s.kv_heads, rng);
		for (int64_t g = 0; g < s.kv_heads; ++g) {
			layer.query_heads.push_back(shuffled(s.group_size(), rng));
			layer.value_dims.push_back(shuffled(s.head_dim, rng));
		}
		p.layers.push_back(std::move(layer));
	}
	return p;
}

void write_permuted_copy(const std::filesystem::path& from, const std::filesystem::path& to, uint64_t seed) {
	const ModelFolder model(from);
	const auto shape = read_llama_shape(model, from.string());
	auto weights = read_weights(model, shape, from.string());
	permute_weights(weights, shape, random_permutation(shape, seed));
	write_weights(model, weights, to.string(), false, UINT64_MAX);
}

at::Tensor logits_of(const std::filesystem::path& dir, const std::vector<std::vector<int64_t>>& sequences) {
	at::NoGradGuard no_grad;
	return nn::LlamaModel::load(dir, at::kDouble).forward(nn::right_padded_ids(sequences));
}

class DataAlignTest : public ::testing::Test {
protected:
	test::TempDir dir_;
	std::filesystem::path path(const std::string& name) const { return dir_ / name; }

	void SetUp() override { write_token_data(path("data.jsonl"), token_sequences(64, 16, 5)); }

	int align(const std::string& method, const std::string& ref, const std::string& model, const std::string& out,
	          const std::string& extra = "", std::string* err = nullptr) {
		return test::run_weld(fmt::format("align {} {} {} --method {} --data {} --quiet {}", path(ref).string(),
		                                  path(model).string(), path(out).string(), method, path("data.jsonl").string(),
		                                  extra),
		                      err);
	}
	// A tiny Llama with GQA, or a Qwen2 with q/k/v biases.
	void write(const std::string& name, uint64_t seed, bool qwen = false) {
		auto tensors = make_tiny_llama(align_spec(), seed);
		if (qwen) test::add_qkv_biases(tensors);
		write_tiny_llama(path(name), align_spec(), tensors);
		if (qwen) test::edit_config(path(name), {{"architectures", {"Qwen2ForCausalLM"}}, {"rope_theta", 1000000.0}});
	}
};

TEST_F(DataAlignTest, ActivationMatchingUndoesAHiddenPermutationExactly) {
	for (const bool qwen : {false, true}) {
		SCOPED_TRACE(qwen ? "Qwen2" : "Llama");
		write("ref", 3, qwen);
		write_permuted_copy(path("ref"), path("shuffled"), 9);
		const auto seqs = token_sequences(4, 12, 77);
		std::printf("max |logit difference| of a permuted copy: %.3g\n",
		            test::max_difference(logits_of(path("ref"), seqs), logits_of(path("shuffled"), seqs)));
		EXPECT_NE(test::read_file(path("ref") / "model.safetensors"),
		          test::read_file(path("shuffled") / "model.safetensors"));
		ASSERT_EQ(align("activation", "ref", "shuffled", "back"), 0);
		EXPECT_EQ(test::read_file(path("ref") / "model.safetensors"),
		          test::read_file(path("back") / "model.safetensors"));
		std::filesystem::remove_all(path("ref"));
		std::filesystem::remove_all(path("shuffled"));
		std::filesystem::remove_all(path("back"));
	}
}

TEST_F(DataAlignTest, ActivationAlignmentKeepsTheFunction) {
	for (const bool qwen : {false, true}) {
		SCOPED_TRACE(qwen ? "Qwen2" : "Llama");
		const std::string tag = qwen ? "q" : "l";
		write("ref" + tag, 3, qwen);
		write("other" + tag, 11, qwen);
		ASSERT_EQ(align("activation", "ref" + tag, "other" + tag, "aligned" + tag), 0);
		const auto seqs = token_sequences(4, 12, 78);
		const double diff =
		    test::max_difference(logits_of(path("other" + tag), seqs), logits_of(path("aligned" + tag), seqs));
		std::printf("max |logit difference| after activation alignment (%s): %.3g\n", qwen ? "Qwen2" : "Llama", diff);
		EXPECT_LE(diff, 1e-4);
		EXPECT_NE(test::read_file(path("other" + tag) / "model.safetensors"),
		          test::read_file(path("aligned" + tag) / "model.safetensors"));
	}
}

TEST_F(DataAlignTest, RotationKeepsTheFunctionAndUndoesNothingOnACopy) {
	for (const bool qwen : {false, true}) {
		SCOPED_TRACE(qwen ? "Qwen2" : "Llama");
		const std::string tag = qwen ? "q" : "l";
		write("ref" + tag, 3, qwen);
		write("other" + tag, 11, qwen);
		ASSERT_EQ(align("activation", "ref" + tag, "other" + tag, "rotated" + tag, "--rotate"), 0);
		const auto seqs = token_sequences(4, 12, 81);
		const double diff =
		    test::max_difference(logits_of(path("other" + tag), seqs), logits_of(path("rotated" + tag), seqs));
		std::printf("max |logit difference| after activation alignment with --rotate (%s): %.3g\n",
		            qwen ? "Qwen2" : "Llama", diff);
		EXPECT_LE(diff, 1e-4);
		// Aligned onto itself: the permutation is the identity and so is every rotation.
		write_permuted_copy(path("ref" + tag), path("shuffled" + tag), 9);
		ASSERT_EQ(align("activation", "ref" + tag, "shuffled" + tag, "back" + tag, "--rotate"), 0);
		const ModelFolder ref(path("ref" + tag)), back(path("back" + tag));
		double largest = 0;
		for (const auto& t : ref.tensors()) {
			const auto a = t.file->data(*t.info);
			const auto* other = back.find(t.info->name);
			ASSERT_NE(other, nullptr);
			const auto b = other->file->data(*other->info);
			const auto* fa = reinterpret_cast<const float*>(a.data());
			const auto* fb = reinterpret_cast<const float*>(b.data());
			for (size_t i = 0; i < a.size() / 4; ++i)
				largest = std::max(largest, static_cast<double>(std::abs(fa[i] - fb[i])));
		}
		std::printf("--rotate of a permuted copy back onto the model: largest weight difference %.3g\n", largest);
		EXPECT_LE(largest, 1e-5);
	}
}

TEST_F(DataAlignTest, PleasOfAModelAndItsPermutedCopyIsTheModel) {
	write("ref", 3);
	write_permuted_copy(path("ref"), path("shuffled"), 9);
	// A tiny ridge: the fits are then exact (the default 1e-4 moves these logits by 3.5e-3).
	ASSERT_EQ(align("pleas", "ref", "shuffled", "merged", "--ridge 1e-8"), 0);
	const auto seqs = token_sequences(4, 12, 79);
	const auto ref = logits_of(path("ref"), seqs);
	const double diff = test::max_difference(ref, logits_of(path("merged"), seqs));
	std::printf("PLeaS of a model and its permuted copy: max |logit difference| %.3g (largest |logit| %.3g)\n", diff,
	            ref.abs().max().item<double>());
	EXPECT_LE(diff, 1e-5);
}

TEST_F(DataAlignTest, PleasFitsTheMeanOutputBetterThanAveragingAtAnyWidth) {
	write("ref", 3);
	write("other", 11);
	ASSERT_EQ(align("activation", "ref", "other", "aligned"), 0);
	// Plain averaging of the aligned pair: the linear merge engine.
	test::write_file(path("avg.yml"), fmt::format("merge_method: linear\nmodels:\n  - model: {}\n    parameters: "
	                                              "{{weight: 1}}\n  - model: {}\n    parameters: {{weight: 1}}\n",
	                                              path("ref").string(), path("aligned").string()));
	ASSERT_EQ(test::run_weld(fmt::format("merge {} {} --quiet", path("avg.yml").string(), path("avg").string())), 0);
	const auto seqs = token_sequences(16, 12, 80); // the data the fits saw is other text
	const auto target = (logits_of(path("ref"), seqs) + logits_of(path("aligned"), seqs)) / 2;
	const double averaged = (logits_of(path("avg"), seqs) - target).pow(2).mean().item<double>();
	for (const int64_t width : {32, 64, 96, 128}) {
		const auto out = fmt::format("pleas{}", width);
		ASSERT_EQ(align("pleas", "ref", "other", out, fmt::format("--width {}", width)), 0);
		const auto config = nlohmann::json::parse(test::read_file(path(out) / "config.json"));
		EXPECT_EQ(config.at("intermediate_size").get<int64_t>(), width);
		const double fitted = (logits_of(path(out), seqs) - target).pow(2).mean().item<double>();
		std::printf("mean squared error to the two models' mean logits: averaged %.4g, PLeaS width %ld %.4g\n",
		            averaged, width, fitted);
		EXPECT_LT(fitted, averaged) << "width " << width;
	}
}

TEST_F(DataAlignTest, ZipitIsActivationAlignmentThenAverage) {
	write("ref", 3);
	write("other", 11);
	ASSERT_EQ(align("activation", "ref", "other", "aligned"), 0);
	test::write_file(path("linear.yml"),
	                 fmt::format("merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 3}}\n  - "
	                             "model: {}\n    parameters: {{weight: 1}}\n",
	                             path("ref").string(), path("aligned").string()));
	ASSERT_EQ(test::run_weld(fmt::format("merge {} {} --quiet", path("linear.yml").string(), path("linear").string())),
	          0);
	test::write_file(
	    path("zipit.yml"),
	    fmt::format("merge_method: zipit\nparameters:\n  data: {}\nmodels:\n  - model: {}\n    parameters: "
	                "{{weight: 3}}\n  - model: {}\n    parameters: {{weight: 1}}\n",
	                path("data.jsonl").string(), path("ref").string(), path("other").string()));
	std::string err;
	ASSERT_EQ(
	    test::run_weld(fmt::format("merge {} {} --quiet", path("zipit.yml").string(), path("zipit").string()), &err), 0)
	    << err;
	const ModelFolder zipit(path("zipit")), linear(path("linear"));
	for (const auto& t : linear.tensors()) {
		const auto* z = zipit.find(t.info->name);
		ASSERT_NE(z, nullptr) << t.info->name;
		const auto a = t.file->data(*t.info), b = z->file->data(*z->info);
		ASSERT_EQ(a.size(), b.size());
		// float32 sums in another order: within a few ulps.
		const auto* fa = reinterpret_cast<const float*>(a.data());
		const auto* fb = reinterpret_cast<const float*>(b.data());
		for (size_t i = 0; i < a.size() / 4; ++i)
			ASSERT_NEAR(fa[i], fb[i], 1e-6f * (1 + std::abs(fa[i]))) << t.info->name << "[" << i << "]";
	}
	EXPECT_TRUE(std::filesystem::exists(path("zipit") / "weld_recipe.yml"));
}

TEST_F(DataAlignTest, BadInputIsOneErrorAndNothingWritten) {
	write("ref", 3);
	auto wide = align_spec();
	wide.hidden = 48;
	write_tiny_llama(path("wide"), wide, make_tiny_llama(wide, 4));
	std::string err;
	EXPECT_NE(align("activation", "ref", "wide", "out", "", &err), 0);
	EXPECT_NE(err.find("hidden"), std::string::npos) << err;
	EXPECT_FALSE(std::filesystem::exists(path("out")));

	write("other", 11);
	write_token_data(path("data.jsonl"), token_sequences(3, 16, 5)); // 48 tokens; 128 needed
	EXPECT_NE(align("pleas", "ref", "other", "out", "", &err), 0);
	EXPECT_NE(err.find("data.jsonl"), std::string::npos) << err;
	EXPECT_NE(err.find("tokens"), std::string::npos) << err;
	EXPECT_FALSE(std::filesystem::exists(path("out")));

	EXPECT_NE(test::run_weld(fmt::format("align {} {} {} --method activation", path("ref").string(),
	                                     path("other").string(), path("out").string()),
	                         &err),
	          0);
	EXPECT_NE(err.find("needs --data"), std::string::npos) << err;
	EXPECT_FALSE(std::filesystem::exists(path("out")));

	EXPECT_NE(align("pleas", "ref", "other", "out", "--width 200", &err), 0);
	EXPECT_NE(err.find("--width"), std::string::npos) << err;
	EXPECT_FALSE(std::filesystem::exists(path("out")));
}

} // namespace
} // namespace weld
