// Merges that learn from data with the runtime: AdaMerging's λ-gradient against central finite
// differences of the entropy (float64), task-wise gradients as sums of layer-wise ones, the
// learned merge end to end (its output recipe reruns without data to the same bytes, for any
// thread count), and its errors.
#include "exec/merge.h"
#include "io/output_folder.h"
#include "learned/adamerging.h"
#include "learned/fw_merging.h"
#include "learned/learned_merge.h"
#include "nn_family.h"
#include "nn_test_util.h"
#include "util/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

namespace weld {
namespace {

namespace fs = std::filesystem;
using learned::TaskVectorModel;
using test::error_of;

class Learned : public ::testing::Test {
protected:
	void SetUp() override {
		test::write_noisy_family(tmp.path(), test::kLearnedFamilyConfig, 2, 100, 0.2);
		test::write_file(tmp / "prompts.jsonl", "{\"prompt\": \"ab=\", \"answer\": \"?\"}\n"
		                                        "{\"prompt\": \"xyz=\", \"answer\": \"?\"}\n"
		                                        "{\"prompt\": \"q=\", \"answer\": \"?\"}\n");
	}
	TaskVectorModel load(at::ScalarType dtype = at::kDouble) {
		return TaskVectorModel(tmp / "base", {tmp / "e0", tmp / "e1"}, dtype);
	}
	test::TempDir tmp;
};

TEST_F(Learned, LambdaGradientIsTheFiniteDifferenceOfTheEntropy) {
	auto tv = load();
	const auto prompts = learned::read_prompts(tmp / "prompts.jsonl", tv.model(), tmp / "base");
	const auto groups = static_cast<int64_t>(tv.names().size());
	auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
	const auto c0 = at::rand({2, groups}, gen, at::TensorOptions().dtype(at::kDouble));
	tv.apply(c0);
	const auto answered = learned::greedy_answers(tv.model(), prompts, 4);
	auto entropy_at = [&](const at::Tensor& c) {
		tv.apply(c);
		return learned::mean_answer_entropy(tv.model(), answered);
	};
	auto c = c0.clone().requires_grad_(true);
	entropy_at(c).backward();
	const auto grad = c.grad();
	EXPECT_GT(grad.abs().max().item<double>(), 1e-3); // a gradient worth checking
	const double h = 1e-6;
	for (int64_t k = 0; k < 2; ++k)
		for (int64_t g = 0; g < groups; g += 3) {
			auto up = c0.clone(), down = c0.clone();
			up[k][g] += h;
			down[k][g] -= h;
			const double fd = (entropy_at(up).item<double>() - entropy_at(down).item<double>()) / (2 * h);
			EXPECT_NEAR(grad[k][g].item<double>(), fd, 1e-6 * std::abs(fd) + 1e-9) << tv.names()[g] << " task " << k;
		}
	// Task-wise: one λ per task; its gradient is the sum of the layer-wise ones at equal λ.
	const auto equal = at::full({2, groups}, 0.4, at::TensorOptions().dtype(at::kDouble)).requires_grad_(true);
	entropy_at(equal).backward();
	const auto task = at::full({2, 1}, 0.4, at::TensorOptions().dtype(at::kDouble)).requires_grad_(true);
	entropy_at(task).backward();
	EXPECT_TRUE(at::allclose(task.grad().squeeze(1), equal.grad().sum(1), 1e-10, 1e-12));
}

TEST_F(Learned, EntropyFallsAndTheRecipeRerunsWithoutData) {
	auto tv = load(at::kFloat);
	const auto prompts = learned::read_prompts(tmp / "prompts.jsonl", tv.model(), tmp / "base");
	std::vector<double> entropies;
	learned::AdaMergingOptions o;
	o.steps = 20;
	o.lr = 0.05;
	o.batch = 3;
	learned::learn_adamerging(tv, prompts, o,
	                          [&](const learned::AdaMergingStep& s) { entropies.push_back(s.entropy); });
	ASSERT_EQ(entropies.size(), 20u);
	EXPECT_LT(entropies.back(), entropies.front());

	const std::string recipe = "merge_method: adamerging\nbase_model: base\nparameters: {data: prompts.jsonl, steps: "
	                           "5, lr: 0.05, batch: 2}\nmodels:\n  - model: e0\n  - model: e1\n";
	test::write_file(tmp / "ada.yml", recipe);
	const test::WorkingDir here(tmp.path());
	learned::LearnedMergeOptions options{tmp / "ada.yml", tmp / "out", false, 1, 0, true};
	const auto text = learned::run_learned_merge(options);
	EXPECT_EQ(test::read_file(tmp / "out" / "weld_recipe.yml"), text);
	EXPECT_NE(text.find("merge_method: task_arithmetic"), std::string::npos);
	EXPECT_NE(text.find("{filter: \"model.layers.1.mlp.down_proj.weight\", value: "), std::string::npos);
	options.out = tmp / "out2";
	options.threads = 2;
	learned::run_learned_merge(options);
	MergeOptions rerun;
	rerun.recipe_path = tmp / "out" / "weld_recipe.yml";
	rerun.out_dir = tmp / "rerun";
	run_merge(rerun);
	const auto bytes = test::read_file(tmp / "out" / "model.safetensors");
	EXPECT_EQ(test::read_file(tmp / "out2" / "model.safetensors"), bytes);
	EXPECT_EQ(test::read_file(tmp / "rerun" / "model.safetensors"), bytes);
}

TEST_F(Learned, FrankWolfeLowersTheProxyLossAndStaysInTheHull) {
	auto tv = load(at::kFloat);
	const auto proxy = nn::read_sequences(tmp / "prompts.jsonl", 258, 32, "");
	learned::FwOptions o;
	o.steps = 6;
	o.scaling = 2;
	std::vector<double> losses;
	const auto c = learned::learn_fw_merging(tv, proxy, o, [&](const learned::FwStep& s) { losses.push_back(s.loss); });
	ASSERT_EQ(losses.size(), 6u);
	EXPECT_LT(losses.back(), losses.front());
	// Each tensor is a convex combination of the base and the vertices θ_base + 2 τ_k.
	EXPECT_TRUE((c >= 0).all().item<bool>());
	EXPECT_TRUE((c.sum(0) <= 2 + 1e-6).all().item<bool>());
}

// RegMean++'s defining property, recomputed from its output: every linear weight W* solves
// RegMean's normal equations Σ_i (W* − W_i) G̃_i = 0 with G_i taken on task i's data through the
// merged model itself (which is what the stages saw, as each reads only what came before it).
TEST_F(Learned, RegMeanPlusPlusSolvesTheNormalEquationsThroughTheMergedModel) {
	test::write_file(tmp / "d0.txt", "abc=cba\nhello\n");
	test::write_file(tmp / "d1.txt", "xyz 12\nmerge me\nq\n");
	test::write_file(tmp / "pp.yml", "merge_method: regmean_pp\nparameters: {alpha: 0.8}\nmodels:\n"
	                                 "  - model: e0\n    parameters: {data: d0.txt}\n"
	                                 "  - model: e1\n    parameters: {data: d1.txt}\n");
	const test::WorkingDir here(tmp.path());
	learned::run_learned_merge({tmp / "pp.yml", tmp / "pp", false, 1, 0, true});
	const auto merged = nn::LlamaModel::load(tmp / "pp", at::kDouble);
	const auto e0 = nn::LlamaModel::load(tmp / "e0", at::kDouble), e1 = nn::LlamaModel::load(tmp / "e1", at::kDouble);
	std::vector<std::map<std::string, at::Tensor>> grams(2);
	for (int k = 0; k < 2; ++k) {
		auto model = nn::LlamaModel::load(tmp / "pp", at::kDouble);
		int64_t tokens = 0;
		model.set_linear_observer([&](const std::string& name, const at::Tensor& x, const at::Tensor&) {
			const auto rows = x.detach().reshape({-1, x.size(-1)});
			auto& g = grams[static_cast<size_t>(k)][name];
			g = g.defined() ? g + at::matmul(rows.t(), rows) : at::matmul(rows.t(), rows);
		});
		for (const auto& seq : nn::read_sequences(tmp / fmt::format("d{}.txt", k), 258, 32, "")) {
			model.forward(at::tensor(seq.ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0));
			tokens += static_cast<int64_t>(seq.ids.size());
		}
		for (auto& [name, g] : grams[static_cast<size_t>(k)])
			g = g / static_cast<double>(tokens);
	}
	size_t checked = 0;
	for (const auto& [name, g0] : grams[0]) {
		auto regularized = [](const at::Tensor& g) { return g * 0.8 + at::diag(at::diag(g)) * 0.2; };
		const auto w = merged.parameter(name);
		const auto residual = at::matmul(w - e0.parameter(name), regularized(g0)) +
		                      at::matmul(w - e1.parameter(name), regularized(grams[1].at(name)));
		const auto scale = at::matmul(e0.parameter(name).abs(), regularized(g0).abs()).max().item<double>();
		EXPECT_LT(residual.abs().max().item<double>(), 1e-4 * scale) << name;
		checked++;
	}
	EXPECT_EQ(checked, 2u * 7 + 1); // two layers of seven projections, and lm_head
	const auto norm = (e0.parameter("model.norm.weight") + e1.parameter("model.norm.weight")) / 2;
	EXPECT_TRUE(at::allclose(merged.parameter("model.norm.weight"), norm, 1e-6, 1e-7));
	EXPECT_NE(test::read_file(tmp / "pp" / "weld_recipe.yml").find("merge_method: regmean_pp"), std::string::npos);
}

TEST_F(Learned, BadRecipesAndDataAreOneClearError) {
	const test::WorkingDir here(tmp.path());
	auto error = [&](const std::string& params, const std::string& out = "failed") {
		test::write_file(tmp / "r.yml", fmt::format("merge_method: adamerging\nbase_model: base\nparameters: {}\n"
		                                            "models:\n  - model: e0\n  - model: e1\n",
		                                            params));
		return error_of([&] { learned::run_learned_merge({tmp / "r.yml", tmp / out, false, 1, 0, true}); });
	};
	EXPECT_NE(error("{steps: 1}").find("needs parameter 'data'"), std::string::npos);
	test::write_file(tmp / "empty.txt", "\n");
	EXPECT_NE(error("{data: empty.txt}").find("empty.txt: no prompt"), std::string::npos);
	EXPECT_NE(error("{data: missing.jsonl}").find("missing.jsonl: no such file"), std::string::npos);
	EXPECT_NE(error("{data: prompts.jsonl, granularity: block}").find("granularity is 'block'"), std::string::npos);
	EXPECT_NE(error("{data: prompts.jsonl, lr: -1}").find("parameters.lr is -1"), std::string::npos);
	EXPECT_NE(error("{data: prompts.jsonl, temprature: 2}")
	              .find("unknown parameter 'temprature' for method "
	                    "'adamerging'; did you mean 'temperature'?"),
	          std::string::npos);
	fs::create_directories(tmp / "taken");
	EXPECT_NE(error("{data: prompts.jsonl}", "taken").find("already exists"), std::string::npos);
	EXPECT_FALSE(fs::exists(tmp / "failed"));
}

} // namespace
} // namespace weld

namespace weld {
namespace {

// The layer-wise oracle on a constructed pool: inner[k][l] = ⟨g^l, τ_k^l⟩, current point c.
TEST(FwMerging, OracleTakesTheVertexOfSteepestDescent) {
	const auto inner = at::tensor({1.0, -2.0, 0.5, -1.0, -1.0, 0.2}, at::kDouble).view({2, 3});
	// From the base: tensor 0 descends most along model 1, tensor 1 along model 0; no vertex
	// lowers tensor 2's linearized loss, so it stays.
	EXPECT_EQ(learned::fw_vertices(inner, at::zeros({2, 3}, at::kDouble), 1.0), (std::vector<int64_t>{1, 0, -2}));
	// At θ = θ_base + τ_0 on tensor 2, ⟨g, v − θ⟩ is -0.5 for the base vertex, 0 for model 0 and
	// -0.3 for model 1: back toward the base.
	const auto c = at::tensor({0.0, 0.0, 1.0, 0.0, 0.0, 0.0}, at::kDouble).view({2, 3});
	EXPECT_EQ(learned::fw_vertices(inner, c, 1.0)[2], -1);
	// Vertices twice as far: model 1 on tensor 2 gives 0.4 - 0.5 = -0.1, still above the base's.
	EXPECT_EQ(learned::fw_vertices(inner, c, 2.0)[2], -1);
	// Irrelevant models (zero inner products) are never taken where a relevant one descends.
	const auto pool = at::cat({inner, at::zeros({3, 3}, at::kDouble)}, 0);
	EXPECT_EQ(learned::fw_vertices(pool, at::zeros({5, 3}, at::kDouble), 1.0), (std::vector<int64_t>{1, 0, -2}));
}

} // namespace
} // namespace weld
