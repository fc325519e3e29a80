// End-to-end merges of tiny Llama-shaped families: recipe file in, model folder out, values
// checked against the methods' definitions computed here element by element.
#include "exec/merge.h"
#include "family_fixture.h"
#include "test_util.h"
#include "util/error.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>

namespace weld {
namespace {

namespace fs = std::filesystem;
using test::Tensors;

class MergeTest : public ::testing::TestWithParam<std::tuple<DType, bool>>, protected test::Family {
protected:
	MergeTest() { max_shard_bytes_ = 5000; } // several shards even for tiny models

	// base, a and b.
	void make_family(DType dtype, bool sharded, int layers = 3) { Family::make_family(dtype, layers, 2, sharded); }
};

TEST_P(MergeTest, LinearIsTheNormalizedWeightedMean) {
	const auto [dtype, sharded] = GetParam();
	make_family(dtype, sharded);
	merge("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1.0}\n"
	      "  - model: b\n    parameters: {weight: 3.0}\n");
	const auto out = test::read_model(dir_ / "out");
	ASSERT_EQ(out.size(), a_.size());
	for (const auto& [name, values] : a_)
		for (size_t i = 0; i < values.size(); i += 7)
			expect_near(out, name, i, (1.0 * a_[name][i] + 3.0 * b_[name][i]) / 4.0);
}

TEST_P(MergeTest, TaskArithmeticAddsScaledDeltas) {
	const auto [dtype, sharded] = GetParam();
	make_family(dtype, sharded);
	merge("merge_method: task_arithmetic\nbase_model: base\nparameters: {lambda: 0.5}\nmodels:\n"
	      "  - model: a\n    parameters: {weight: 1.0}\n  - model: b\n    parameters: {weight: 0.5}\n");
	const auto out = test::read_model(dir_ / "out");
	for (const auto& [name, values] : base_)
		for (size_t i = 0; i < values.size(); i += 5) {
			const double base = base_[name][i];
			expect_near(out, name, i, base + 0.5 * ((a_[name][i] - base) + 0.5 * (b_[name][i] - base)));
		}
}

// TIES at density 1: per element, the deltas agreeing with the sign of the weighted sum,
// averaged by their weights.
TEST_P(MergeTest, TiesElectsSignsAndAveragesAgreeingDeltas) {
	const auto [dtype, sharded] = GetParam();
	make_family(dtype, sharded);
	merge("merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1.0}\n"
	      "  - model: b\n    parameters: {weight: 2.0}\n");
	const auto out = test::read_model(dir_ / "out");
	for (const auto& [name, values] : base_)
		for (size_t i = 0; i < values.size(); i += 3) {
			const double base = base_[name][i], da = a_[name][i] - base, db = b_[name][i] - base;
			const double sign = (1.0 * da + 2.0 * db) >= 0 ? 1 : -1;
			double sum = 0, weights = 0;
			if (da * sign > 0) sum += 1.0 * da, weights += 1.0;
			if (db * sign > 0) sum += 2.0 * db, weights += 2.0;
			expect_near(out, name, i, base + sum / (weights == 0 ? 1 : weights));
		}
}

TEST_P(MergeTest, SlerpFollowsTheGreatCircle) {
	const auto [dtype, sharded] = GetParam();
	make_family(dtype, sharded);
	merge("merge_method: slerp\nbase_model: base\nparameters: {t: 0.3}\nmodels:\n  - model: base\n  - model: a\n");
	const auto out = test::read_model(dir_ / "out");
	for (const auto& [name, values] : base_) {
		const auto &v0 = base_[name], &v1 = a_[name];
		double n0 = 0, n1 = 0, dot = 0;
		for (size_t i = 0; i < v0.size(); i++)
			n0 += v0[i] * v0[i], n1 += v1[i] * v1[i], dot += v0[i] * v1[i];
		const double cos = dot / std::sqrt(n0 * n1);
		for (size_t i = 0; i < v0.size(); i += 5) {
			double expected = 0.7 * v0[i] + 0.3 * v1[i];
			if (std::abs(cos) <= 0.9995) {
				const double theta = std::acos(cos);
				expected = (std::sin(0.7 * theta) * v0[i] + std::sin(0.3 * theta) * v1[i]) / std::sin(theta);
			}
			expect_near(out, name, i, expected);
		}
	}
}

INSTANTIATE_TEST_SUITE_P(Families, MergeTest,
                         ::testing::Combine(::testing::Values(DType::F32, DType::BF16), ::testing::Bool()),
                         [](const auto& param_info) {
	                         return std::string(dtype_safetensors_name(std::get<0>(param_info.param))) +
	                                (std::get<1>(param_info.param) ? "_sharded" : "_single");
                         });

class MergeRecipeTest : public MergeTest {};

TEST_F(MergeRecipeTest, GradientsInterpolateOverLayers) {
	make_family(DType::F32, false, 3);
	// weight of b: 0 at layer 0, 0.5 at layer 1, 1 at layer 2; a keeps weight 1; t = 0 elsewhere.
	merge("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
	      "  - model: b\n    parameters:\n      weight: [0, 1]\n");
	const auto out = test::read_model(dir_ / "out");
	for (int layer = 0; layer < 3; layer++) {
		const double w = layer / 2.0;
		const auto name = "model.layers." + std::to_string(layer) + ".mlp.up_proj.weight";
		for (size_t i = 0; i < 10; i++)
			expect_near(out, name, i, (a_[name][i] + w * b_[name][i]) / (1 + w));
	}
	expect_near(out, "model.norm.weight", 0, a_["model.norm.weight"][0]);
}

TEST_F(MergeRecipeTest, FiltersPickTheFirstMatchingRule) {
	make_family(DType::F32, false);
	merge("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
	      "  - model: b\n    parameters:\n      weight:\n        - filter: mlp\n          value: 1\n"
	      "        - filter: self_attn\n          value: [0, 3]\n        - value: 0\n");
	const auto out = test::read_model(dir_ / "out");
	const std::string mlp = "model.layers.1.mlp.down_proj.weight", attn = "model.layers.2.self_attn.q_proj.weight";
	expect_near(out, mlp, 3, (a_[mlp][3] + b_[mlp][3]) / 2);
	expect_near(out, attn, 3, (a_[attn][3] + 3 * b_[attn][3]) / 4);
	expect_near(out, "model.embed_tokens.weight", 3, a_["model.embed_tokens.weight"][3]);
}

TEST_F(MergeRecipeTest, PassthroughSlicesStackLayers) {
	make_family(DType::BF16, false, 3);
	merge("merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 2]\n"
	      "  - sources:\n      - model: b\n        layer_range: [1, 3]\n        parameters: {scale: 2.0}\n");
	const auto out = test::read_model(dir_ / "out");
	for (const auto& [src, src_layer, out_layer, scale] :
	     {std::tuple{&a_, 0, 0, 1.0}, {&a_, 1, 1, 1.0}, {&b_, 1, 2, 2.0}, {&b_, 2, 3, 2.0}}) {
		const auto in = "model.layers." + std::to_string(src_layer) + ".self_attn.v_proj.weight";
		const auto name = "model.layers." + std::to_string(out_layer) + ".self_attn.v_proj.weight";
		for (size_t i = 0; i < 8; i++)
			expect_near(out, name, i, scale * (*src)[in][i]);
	}
	EXPECT_FALSE(out.count("model.layers.4.self_attn.v_proj.weight"));
	const auto config = nlohmann::json::parse(test::read_file(dir_ / "out" / "config.json"));
	EXPECT_EQ(config["num_hidden_layers"], 4);
	// Embeddings from the first slice's model, final norm from the last slice's, whose source
	// parameters apply to it too (as in mergekit).
	expect_near(out, "model.embed_tokens.weight", 5, a_["model.embed_tokens.weight"][5]);
	expect_near(out, "model.norm.weight", 5, 2.0 * b_["model.norm.weight"][5]);
}

TEST_F(MergeRecipeTest, SlicesWithSeveralSourcesUseLayerGradients) {
	make_family(DType::F32, false, 3);
	merge("slices:\n  - sources:\n      - model: base\n        layer_range: [0, 3]\n      - model: a\n"
	      "        layer_range: [0, 3]\nmerge_method: slerp\nbase_model: base\nparameters:\n  t:\n"
	      "    - filter: self_attn\n      value: [0, 1]\n    - value: 0.5\n");
	const auto out = test::read_model(dir_ / "out");
	// t = 0 at layer 0 (base), 1 at layer 2 (a): the slerp end points.
	const std::string first = "model.layers.0.self_attn.k_proj.weight", last = "model.layers.2.self_attn.k_proj.weight";
	for (size_t i = 0; i < 8; i++) {
		expect_near(out, first, i, base_[first][i]);
		expect_near(out, last, i, a_[last][i]);
	}
}

TEST_F(MergeRecipeTest, HuggingFaceRepoIdsResolveFromTheLocalCache) {
	make_family(DType::F32, false);
	const auto hub = dir_ / "hub";
	for (const auto& [name, folder] : {std::pair{"org--base", "base"}, {"org--tuned", "a"}}) {
		const auto repo = hub / (std::string("models--") + name);
		fs::create_directories(repo / "refs");
		fs::create_directories(repo / "snapshots");
		test::write_file(repo / "refs" / "main", "0123abcd");
		fs::rename(dir_ / folder, repo / "snapshots" / "0123abcd");
	}
	setenv("HF_HUB_CACHE", hub.c_str(), 1);
	merge("merge_method: task_arithmetic\nbase_model: org/base\nmodels:\n  - model: org/tuned@main\n"
	      "    parameters: {weight: 1.0}\n");
	unsetenv("HF_HUB_CACHE");
	const auto out = test::read_model(dir_ / "out");
	expect_near(out, "lm_head.weight", 2, a_["lm_head.weight"][2]);
}

TEST_F(MergeRecipeTest, LargerVocabularyUsesTheBaseRowsWithAWarning) {
	make_family(DType::F32, false);
	auto big_spec = spec_;
	big_spec.vocab = spec_.vocab + 8;
	auto big = make_tiny_llama(big_spec, 7);
	write_tiny_llama(dir_ / "big", big_spec, big);
	const auto summary = merge("merge_method: task_arithmetic\nbase_model: base\nmodels:\n"
	                           "  - model: big\n    parameters: {weight: 1.0}\n");
	ASSERT_FALSE(summary.warnings.empty());
	EXPECT_NE(summary.warnings[0].find("rows"), std::string::npos);
	const auto out = test::read_model(dir_ / "out");
	EXPECT_EQ(out.at("model.embed_tokens.weight").size(), base_["model.embed_tokens.weight"].size());
	expect_near(out, "model.embed_tokens.weight", 3, big[0].values[3]);
}

TEST_F(MergeRecipeTest, OutputFolderIsACompleteHuggingFaceModel) {
	make_family(DType::F32, false);
	merge("merge_method: ties\nbase_model: base\ndtype: bfloat16\nmodels:\n  - model: a\n"
	      "    parameters: {weight: 1, density: 0.5}\n  - model: b\n    parameters: {weight: 1, density: 0.5}\n");
	const auto out = dir_ / "out";
	for (const char* file :
	     {"config.json", "tokenizer_config.json", "weld_recipe.yml", "README.md", "model.safetensors.index.json"})
		EXPECT_TRUE(fs::exists(out / file)) << file;
	const auto config = nlohmann::json::parse(test::read_file(out / "config.json"));
	EXPECT_EQ(config["torch_dtype"], "bfloat16");
	const auto index = nlohmann::json::parse(test::read_file(out / "model.safetensors.index.json"));
	EXPECT_EQ(index["weight_map"].size(), a_.size());
	for (const auto& [tensor, shard] : index["weight_map"].items())
		EXPECT_TRUE(fs::exists(out / shard.get<std::string>()));
	ModelFolder model(out);
	for (const auto& t : model.tensors())
		EXPECT_EQ(t.info->dtype, DType::BF16);
	EXPECT_NE(test::read_file(out / "README.md").find("ties"), std::string::npos);
	for (const auto& entry : fs::directory_iterator(dir_.path()))
		EXPECT_EQ(entry.path().filename().string().find(".weld-tmp"), std::string::npos);
}

TEST_F(MergeRecipeTest, SameSeedGivesIdenticalBytesForAnyThreadCount) {
	make_family(DType::BF16, true);
	const std::string recipe = "merge_method: dare_ties\nbase_model: base\nmodels:\n  - model: a\n"
	                           "    parameters: {weight: 1, density: 0.5}\n  - model: b\n"
	                           "    parameters: {weight: 0.7, density: 0.3}\n";
	merge(recipe, "one", 1, 42);
	merge(recipe, "two", 2, 42);
	merge(recipe, "other_seed", 2, 43);
	merge(recipe, "tiny_budget", 2, 42, 1); // every job exceeds the budget: they run one at a time
	size_t files = 0;
	for (const auto& entry : fs::directory_iterator(dir_ / "one")) {
		EXPECT_EQ(test::read_file(entry.path()), test::read_file(dir_ / "two" / entry.path().filename()))
		    << entry.path();
		EXPECT_EQ(test::read_file(entry.path()), test::read_file(dir_ / "tiny_budget" / entry.path().filename()))
		    << entry.path();
		files++;
	}
	EXPECT_GT(files, 4u);
	const auto first_shard = nlohmann::json::parse(test::read_file(
	    dir_ / "one" / "model.safetensors.index.json"))["weight_map"]["model.layers.0.mlp.up_proj.weight"]
	                             .get<std::string>();
	EXPECT_NE(test::read_file(dir_ / "one" / first_shard), test::read_file(dir_ / "other_seed" / first_shard));
}

TEST_F(MergeRecipeTest, DryRunShowsResolvedParametersAndWritesNothing) {
	make_family(DType::F32, false, 3);
	test::write_file(dir_ / "recipe.yml", "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
	                                      "  - model: b\n    parameters:\n      weight: [0, 1]\n");
	MergeOptions options;
	options.recipe_path = dir_ / "recipe.yml";
	options.out_dir = dir_ / "out";
	options.dry_run = true;
	const auto summary = [&] {
		const test::WorkingDir in_family(dir_.path());
		return run_merge(options);
	}();
	EXPECT_FALSE(fs::exists(dir_ / "out"));
	EXPECT_NE(summary.plan_text.find("model.layers.1.mlp.up_proj.weight"), std::string::npos);
	EXPECT_NE(summary.plan_text.find("<- b:model.layers.1.mlp.up_proj.weight weight=0.5"), std::string::npos)
	    << summary.plan_text;
	EXPECT_NE(summary.plan_text.find("normalize=1"), std::string::npos);
}

} // namespace
} // namespace weld
