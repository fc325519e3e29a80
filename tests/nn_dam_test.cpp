// DAM (src/learned/dam.cpp) on a tiny model, against values known without the method's code:
// before any step the merge is θ_base + λ m̂ ⊙ (1 − b) ⊙ Σ τ with both masks recomputed from the
// seed's draws (or, with the default final_mask median, from their noise-free logits); after
// learning, the output is that formula at the learned logits; after one step the backdoor mask's
// logits of embedding rows no clean example uses (no clean gradient, only the removal reward)
// moved up by Adam's first step, recomputed from the draws; the same seed gives the same bytes; bad clean data
// is one clear error and writes nothing; the output's weld_recipe.yml reruns from its masks file
// without data, to the same bytes.
#include "learned/concrete.h"
#include "learned/dam.h"
#include "learned/learned_merge.h"
#include "nn_family.h"
#include "nn_test_util.h"
#include "util/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <set>

namespace weld {
namespace {

namespace fs = std::filesystem;
using learned::TaskVectorModel;
using test::error_of;

class Dam : public ::testing::Test {
protected:
	void SetUp() override {
		test::write_noisy_family(tmp.path(), test::kLearnedFamilyConfig, 2, 200, 0.2);
		test::write_file(tmp / "clean.jsonl", "{\"prompt\": \"ab=\", \"answer\": \"ba\\n\"}\n"
		                                      "{\"prompt\": \"xyz=\", \"answer\": \"zyx\\n\"}\n"
		                                      "{\"prompt\": \"12+\", \"answer\": \"3\\n\"}\n"
		                                      "{\"prompt\": \"q=\", \"answer\": \"qq\\n\"}\n");
	}
	std::string run(const std::string& name, const std::string& params, uint64_t seed = 0) {
		test::write_file(tmp / (name + ".yml"), "merge_method: dam\nbase_model: base\nparameters: {" + params +
		                                            "}\nmodels:\n  - model: e0\n  - model: e1\n");
		const test::WorkingDir here(tmp.path());
		return learned::run_learned_merge({tmp / (name + ".yml"), tmp / name, false, 1, seed, true});
	}
	std::map<std::string, at::Tensor> weights(const std::string& dir) {
		return nn::LlamaModel::load(tmp / dir, at::kFloat).parameters();
	}
	TaskVectorModel family() { return TaskVectorModel(tmp / "base", {tmp / "e0", tmp / "e1"}, at::kFloat); }
	test::TempDir tmp;
};

TEST_F(Dam, BeforeLearningTheMergeIsTheFormulaAtTheSeedsDraws) {
	run("sampled",
	    "data: clean.jsonl, steps: 0, lambda: 0.4, temperature: 0.7, backdoor_init: -1, batch: 2, "
	    "final_mask: sample",
	    5);
	run("median", "data: clean.jsonl, steps: 0, lambda: 0.4, temperature: 0.7, backdoor_init: -1, batch: 2");
	const auto sampled = weights("sampled"), median = weights("median");
	auto tv = family();
	const size_t tensors = tv.names().size();
	// One draw of the shared mask, tensor after tensor, then one of the backdoor mask.
	auto gen = at::detail::createCPUGenerator(5);
	std::vector<at::Tensor> noise;
	for (size_t i = 0; i < 2 * tensors; ++i) {
		const auto& b = tv.base(i % tensors);
		const auto u = at::rand(b.sizes(), gen, at::TensorOptions().dtype(at::kFloat)).clamp(1e-7, 1 - 1e-7);
		noise.push_back(at::log(u / (1 - u)));
	}
	for (size_t n = 0; n < tensors; ++n) {
		const auto sum = tv.delta(0, n) + tv.delta(1, n);
		const auto m = at::sigmoid(noise[n] / 0.7);                 // shared logits 0
		const auto b = at::sigmoid((noise[tensors + n] - 1) / 0.7); // backdoor logits -1
		const auto expected = tv.base(n) + 0.4 * (m / m.mean()) * (1 - b) * sum;
		EXPECT_TRUE(at::allclose(sampled.at(tv.names()[n]), expected, 1e-5, 1e-5)) << tv.names()[n];
		// Noise-free: m̂ = 1 and b = σ(-1 / 0.7) everywhere.
		const auto plain = tv.base(n) + 0.4 * (1 - 1 / (1 + std::exp(1 / 0.7))) * sum;
		EXPECT_TRUE(at::allclose(median.at(tv.names()[n]), plain, 1e-5, 1e-5)) << tv.names()[n];
	}
}

TEST_F(Dam, MasksBehaveAsDefined) {
	auto tv = family();
	const auto prompts = learned::read_prompts(tmp / "clean.jsonl", tv.model(), tmp / "base");
	const auto examples = nn::read_sequences(tmp / "clean.jsonl", 258, 32, "");
	std::set<int64_t> used;
	for (const auto& e : examples)
		used.insert(e.ids.begin(), e.ids.end());
	learned::DamOptions o;
	o.steps = 1;
	o.backdoor_lr = 0.05;
	o.batch = 4;
	o.alpha = 3;
	o.lambda = 0.5;
	const auto one = learned::learn_dam(tv, prompts, examples, o, {});
	// An embedding row of a token no clean example holds gets no gradient from the clean loss, only
	// from −α mean(b): g = −α/N · b(1 − b)/T with b = σ((L′ + y₀)/T), L′ the step's backdoor noise
	// (drawn after the shared mask's). Adam's first step (ε 1e-12) is y₀ − lr · g/(|g| + ε): up.
	const size_t tensors = tv.names().size();
	size_t embed = 0;
	while (tv.names()[embed] != "model.embed_tokens.weight")
		++embed;
	double total = 0;
	for (size_t n = 0; n < tensors; ++n)
		total += static_cast<double>(tv.base(n).numel());
	auto gen = at::detail::createCPUGenerator(0);
	at::Tensor noise;
	for (size_t i = 0; i <= tensors + embed; ++i) {
		const auto u =
		    at::rand(tv.base(i % tensors).sizes(), gen, at::TensorOptions().dtype(at::kFloat)).clamp(1e-7, 1 - 1e-7);
		noise = at::log(u / (1 - u));
	}
	const auto b = at::sigmoid((noise - 3) / 0.5);
	const auto g = -3.0 / total * b * (1 - b) / 0.5;
	const auto expected = -3 - 0.05 * g / (g.abs() + 1e-12);
	size_t rows = 0;
	for (int64_t token = 0; token < 258; ++token) {
		if (used.count(token)) continue;
		EXPECT_TRUE(at::allclose(one.backdoor_logits[embed][token], expected[token], 1e-5, 1e-6)) << token;
		EXPECT_TRUE((one.backdoor_logits[embed][token] > -3).all().item<bool>()) << token;
		++rows;
	}
	EXPECT_GT(rows, 200u);
	// Rows the clean data uses have a clean gradient too: they move by at most lr, either way.
	for (int64_t token : used)
		EXPECT_TRUE(((one.backdoor_logits[embed][token] + 3).abs() <= 0.05 + 1e-6).all().item<bool>()) << token;

	// After learning, the model is the formula at the learned logits (median masks).
	auto tv2 = family();
	o.steps = 30;
	o.backdoor_lr = 0.2;
	const auto learned = learned::learn_dam(tv2, prompts, examples, o, {});
	for (size_t n = 0; n < tv2.names().size(); ++n) {
		const auto m = at::sigmoid(learned.shared_logits[n] / 0.5);
		const auto removal = at::sigmoid(learned.backdoor_logits[n] / 0.5);
		const auto formula = tv2.base(n) + 0.5 * (m / m.mean()) * (1 - removal) * (tv2.delta(0, n) + tv2.delta(1, n));
		EXPECT_TRUE(at::allclose(tv2.model().parameter(tv2.names()[n]), formula, 1e-5, 1e-5)) << tv2.names()[n];
	}
	// The unused rows kept rising (a token no clean example holds: byte 0), and the reward outweighs
	// the clean loss on some weights but not all.
	EXPECT_GT(learned.backdoor_logits[embed][0].min().item<double>(), -3 + 0.05);
	EXPECT_GT(learned.removed, 0);
	EXPECT_LT(learned.removed, 1);
}

TEST_F(Dam, SameSeedSameBytesAndTheRecipeIsKept) {
	const auto text = run("a", "data: clean.jsonl, steps: 3, batch: 2", 9);
	run("b", "data: clean.jsonl, steps: 3, batch: 2", 9);
	EXPECT_EQ(test::read_file(tmp / "a" / "model.safetensors"), test::read_file(tmp / "b" / "model.safetensors"));
	EXPECT_NE(text.find("merge_method: dam"), std::string::npos);
	EXPECT_NE(text.find("sha256"), std::string::npos);
	EXPECT_EQ(test::read_file(tmp / "a" / "weld_recipe.yml"), text);
	// The output's recipe reruns without data, from the masks file beside the model: the same bytes.
	EXPECT_EQ(text.find("data: clean.jsonl"), std::string::npos);
	EXPECT_NE(text.find("dam_masks.pt"), std::string::npos);
	{
		const test::WorkingDir here(tmp.path());
		learned::run_learned_merge({tmp / "a" / "weld_recipe.yml", tmp / "rerun", false, 1, 0, true});
	}
	EXPECT_EQ(test::read_file(tmp / "a" / "model.safetensors"), test::read_file(tmp / "rerun" / "model.safetensors"));
}

TEST_F(Dam, BadCleanDataIsOneClearErrorAndWritesNothing) {
	auto fails = [&](const std::string& params, const std::string& expected) {
		const auto error = error_of([&] { run("failed", params); });
		EXPECT_NE(error.find(expected), std::string::npos) << error;
		EXPECT_FALSE(fs::exists(tmp / "failed"));
	};
	test::write_file(tmp / "empty.jsonl", "");
	test::write_file(tmp / "lines.txt", "ab=\nxyz=\n");
	fails("steps: 1", "needs parameter 'data'");
	fails("data: missing.jsonl", "missing.jsonl: no such file");
	fails("data: empty.jsonl", "empty.jsonl");
	fails("data: lines.txt", "needs a labeled clean set (prompt/answer JSONL)");
	fails("data: clean.jsonl", "4 labeled examples, too few for parameters.batch 16");
	fails("data: clean.jsonl, batch: 2, alpha: -1", "parameters.alpha is -1");
	fails("data: clean.jsonl, batch: 2, final_mask: hard", "final_mask is 'hard'");
	fails("masks: missing.pt", "missing.pt: no such file");
	fails("masks: clean.jsonl", "clean.jsonl: not a dam masks file");
}

} // namespace
} // namespace weld
