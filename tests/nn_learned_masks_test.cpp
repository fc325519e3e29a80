// The learned merges that end as weights (masks, chunks, routers) and Expert Merging, on a tiny
// model, each against a value known without the method's code: learned Localize-and-Stitch before
// any step is the dataless method (the merge engine's own implementation); Concrete before any step
// is θ_base + λ (m / mean m) ⊙ Σ τ for the mask recomputed from the seed's draws; Expert Merging
// with two copies of one expert learns coefficients that sum to 1 (where the merge is that
// expert); and each recipe through `weld merge`'s runtime path, with its errors.
#include "exec/merge.h"
#include "learned/concrete.h"
#include "learned/expert_merging.h"
#include "learned/learned_merge.h"
#include "learned/localize_stitch.h"
#include "nn/twin.h"
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

class LearnedMasks : public ::testing::Test {
protected:
	void SetUp() override {
		test::write_noisy_family(tmp.path(), test::kLearnedFamilyConfig, 2, 200, 0.2);
		test::write_file(tmp / "d0.jsonl", "{\"prompt\": \"ab=\", \"answer\": \"ba\\n\"}\n"
		                                   "{\"prompt\": \"xyz=\", \"answer\": \"zyx\\n\"}\n");
		test::write_file(tmp / "d1.jsonl", "{\"prompt\": \"12+\", \"answer\": \"3\\n\"}\n"
		                                   "{\"prompt\": \"q=\", \"answer\": \"qq\\n\"}\n");
	}
	std::string run(const std::string& name, const std::string& recipe, uint64_t seed = 0) {
		test::write_file(tmp / (name + ".yml"), recipe);
		const test::WorkingDir here(tmp.path());
		return learned::run_learned_merge({tmp / (name + ".yml"), tmp / name, false, 1, seed, true});
	}
	std::map<std::string, at::Tensor> weights(const std::string& dir) {
		return nn::LlamaModel::load(tmp / dir, at::kFloat).parameters();
	}
	static std::string per_model(const std::string& method, const std::string& params, const std::string& extra = "") {
		return "merge_method: " + method + "\nbase_model: base\nparameters: {" + params +
		       "}\nmodels:\n  - model: e0\n    parameters: {data: d0.jsonl" + extra +
		       "}\n  - model: e1\n    parameters: {data: d1.jsonl" + extra + "}\n";
	}
	test::TempDir tmp;
};

TEST_F(LearnedMasks, LocalizeStitchBeforeLearningIsTheDatalessMethod) {
	run("learned0", per_model("localize_stitch", "mode: learned, steps: 0", ", density: 0.2"));
	MergeOptions dataless;
	test::write_file(tmp / "dataless.yml", per_model("localize_stitch", "", ", density: 0.2"));
	{
		const test::WorkingDir here(tmp.path());
		dataless.recipe_path = tmp / "dataless.yml";
		dataless.out_dir = tmp / "dataless";
		run_merge(dataless);
	}
	const auto a = weights("learned0"), b = weights("dataless");
	for (const auto& [name, t] : a)
		EXPECT_TRUE(at::allclose(t, b.at(name), 1e-6, 1e-6)) << name;

	// Learning moves the masks; the output is the stitch of the masks it learned.
	std::vector<double> kept;
	auto tv = TaskVectorModel(tmp / "base", {tmp / "e0", tmp / "e1"}, at::kFloat);
	learned::LocalizeOptions o;
	o.density = 0.2;
	o.sigmoid_bias = 1;
	o.l1 = 5;
	o.steps = 15;
	std::vector<std::vector<at::Tensor>> masks;
	for (size_t k = 0; k < 2; ++k) {
		const auto examples = nn::read_sequences(tmp / fmt::format("d{}.jsonl", k), 258, 32, "");
		masks.push_back(learned::learn_localize_mask(tv, k, examples, o,
		                                             [&](const learned::LocalizeStep& s) { kept.push_back(s.kept); }));
	}
	EXPECT_NE(kept.back(), 0.2); // l1 and the task loss moved the mask off its start
	learned::stitch(tv, masks);
	for (size_t n = 0; n < tv.names().size(); ++n) {
		const auto g0 = masks[0][n], g1 = masks[1][n];
		const auto count = g0 + g1;
		const auto expected =
		    tv.base(n) + at::where(count > 0, (g0 * tv.delta(0, n) + g1 * tv.delta(1, n)) / count.clamp_min(1),
		                           at::zeros_like(count));
		EXPECT_TRUE(at::allclose(tv.model().parameter(tv.names()[n]), expected, 1e-6, 1e-6)) << tv.names()[n];
		EXPECT_TRUE(((g0 == 0) | (g0 == 1)).all().item<bool>());
	}
}

TEST_F(LearnedMasks, ConcreteBeforeLearningIsTheRescaledSampledMask) {
	test::write_file(tmp / "prompts.txt", "ab=\nxyz=\nq=\n");
	run("c0",
	    "merge_method: concrete\nbase_model: base\nparameters: {data: prompts.txt, steps: 0, lambda: 0.4, "
	    "temperature: 0.7}\nmodels:\n  - model: e0\n  - model: e1\n",
	    5);
	const auto out = weights("c0");
	auto tv = TaskVectorModel(tmp / "base", {tmp / "e0", tmp / "e1"}, at::kFloat);
	auto gen = at::detail::createCPUGenerator(5); // the mask's one draw, tensor after tensor
	for (size_t n = 0; n < tv.names().size(); ++n) {
		const auto u = at::rand(tv.base(n).sizes(), gen, at::TensorOptions().dtype(at::kFloat)).clamp(1e-7, 1 - 1e-7);
		const auto m = at::sigmoid(at::log(u / (1 - u)) / 0.7); // logits 0
		const auto expected = tv.base(n) + 0.4 * (m / m.mean()) * (tv.delta(0, n) + tv.delta(1, n));
		EXPECT_TRUE(at::allclose(out.at(tv.names()[n]), expected, 1e-5, 1e-5)) << tv.names()[n];
	}
	// Learning lowers the entropy, and the same seed gives the same bytes.
	std::vector<double> entropy;
	learned::ConcreteOptions o;
	o.steps = 25;
	o.lr = 0.2;
	o.batch = 3;
	const auto prompts = learned::read_prompts(tmp / "prompts.txt", tv.model(), tmp / "base");
	learned::learn_concrete(tv, prompts, o, [&](const learned::ConcreteStep& s) { entropy.push_back(s.entropy); });
	double first = 0, last = 0;
	for (size_t i = 0; i < 5; ++i)
		first += entropy[i], last += entropy[entropy.size() - 1 - i];
	EXPECT_LT(last, first);
	const auto recipe = "merge_method: concrete\nbase_model: base\nparameters: {data: prompts.txt, steps: 3, "
	                    "variant: adamerging}\nmodels:\n  - model: e0\n  - model: e1\n";
	run("c1", recipe, 9);
	run("c2", recipe, 9);
	EXPECT_EQ(test::read_file(tmp / "c1" / "model.safetensors"), test::read_file(tmp / "c2" / "model.safetensors"));
}

// Two copies of one expert: the merge θ_base + (α_0 + α_1) τ is the expert exactly where α_0 + α_1 = 1,
// which is where the distillation loss is lowest.
TEST_F(LearnedMasks, ExpertMergingOfTwoCopiesLearnsCoefficientsThatSumToOne) {
	auto tv = TaskVectorModel(tmp / "base", {tmp / "e0", tmp / "e0"}, at::kFloat);
	learned::ExpertMergingOptions o;
	o.regularization = 0;
	o.steps = 150;
	o.lr = 0.1;
	o.batch = 4;
	std::vector<std::vector<std::vector<int64_t>>> prompts;
	for (int k = 0; k < 2; ++k)
		prompts.push_back(learned::read_prompts(tmp / fmt::format("d{}.jsonl", k), tv.model(), tmp / "base"));
	std::vector<double> losses;
	const auto result = learned::learn_expert_merging(
	    tv, prompts, o, [&](const learned::ExpertMergingStep& s) { losses.push_back(s.loss); });
	EXPECT_FALSE(result.chunked);
	EXPECT_LT(losses.back(), losses.front());
	double worst = 0;
	for (const auto& alpha : result.alpha)
		worst = std::max(worst, std::abs(alpha.sum().item<double>() - 1));
	EXPECT_LT(worst, 0.1);
	EXPECT_GT(std::abs(result.alpha[0][0][0].item<double>() - 0.1), 0.1); // it moved from lambda_init

	// Through the recipe: the standard variant writes a task_arithmetic recipe, plus writes weights.
	const auto text = run("em", per_model("expert_merging", "steps: 3, regularization: 0"));
	EXPECT_NE(text.find("merge_method: task_arithmetic"), std::string::npos);
	const auto plus = run("emp", per_model("expert_merging", "steps: 3, variant: plus, chunks: 3"));
	EXPECT_NE(plus.find("merge_method: expert_merging"), std::string::npos);
	EXPECT_NE(test::read_file(tmp / "em" / "model.safetensors"), test::read_file(tmp / "emp" / "model.safetensors"));
}

TEST_F(LearnedMasks, TwinRecipesWriteAFolderWeldEvalRoutes) {
	const auto text = run("tw", per_model("twin", "router_epochs: 3"));
	EXPECT_NE(text.find("merge_method: twin"), std::string::npos);
	EXPECT_TRUE(nn::is_twin_folder(tmp / "tw"));
	EXPECT_TRUE(fs::exists(tmp / "tw" / "twin.safetensors"));
}

TEST_F(LearnedMasks, MissingDataIsOneClearError) {
	auto fails = [&](const std::string& recipe, const std::string& expected) {
		const auto error = error_of([&] { run("failed", recipe); });
		EXPECT_NE(error.find(expected), std::string::npos) << error;
		EXPECT_FALSE(fs::exists(tmp / "failed"));
	};
	const std::string no_data = "base_model: base\nmodels:\n  - model: e0\n  - model: e1\n";
	fails("merge_method: localize_stitch\nparameters: {mode: learned}\n" + no_data,
	      "model 'e0': method 'localize_stitch' needs its data: file");
	fails("merge_method: expert_merging\n" + no_data, "model 'e0': method 'expert_merging' needs its data: file");
	fails("merge_method: twin\n" + no_data, "model 'e0'");
	fails("merge_method: concrete\n" + no_data, "needs parameter 'data'");
	fails(per_model("expert_merging", "variant: huge"), "variant is 'huge'");
	fails(per_model("concrete", "data: d0.jsonl, temprature: 0.5"),
	      "unknown parameter 'temprature' for method 'concrete'; did you mean 'temperature'?");
	fails("merge_method: concrete\nparameters: {data: d0.jsonl, temperature: 0}\n" + no_data,
	      "parameters.temperature is 0");
	fails(per_model("localize_stitch", "mode: learned, l1: -1"), "parameters.l1 is -1");
}

} // namespace
} // namespace weld
