// Twin-Merging (src/learned/twin.h, src/nn/twin.h): the exclusive parts against an SVD computed
// here, one-hot routing at full rank reproducing each expert, the router separating two prompt
// sets, weld eval on a twin folder, errors naming the model or the tensor, and the same bytes for
// the same seed.
#include "io/safetensors.h"
#include "learned/twin.h"
#include "nn/eval.h"
#include "nn/twin.h"
#include "nn_family.h"
#include "nn_test_util.h"
#include "plan/recipe.h"
#include "util/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace weld {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::error_of;

at::Tensor read_f32(const SafetensorsFile& file, const std::string& name) {
	const auto* info = file.find(name);
	if (!info) throw std::runtime_error("no tensor " + name);
	EXPECT_EQ(info->dtype, DType::F32) << name;
	auto out = at::empty(std::vector<int64_t>(info->shape.begin(), info->shape.end()), at::kFloat);
	const auto bytes = file.data(*info);
	std::memcpy(out.data_ptr(), bytes.data(), bytes.size());
	return out.to(at::kDouble);
}

double max_abs(const at::Tensor& t) {
	return t.abs().max().item<double>();
}

class Twin : public ::testing::Test {
protected:
	void SetUp() override {
		test::write_noisy_family(tmp.path(), test::kLearnedFamilyConfig, 2, 100, 0.2);
		std::string d0, d1;
		for (const char* p : {"aaa=", "abab=", "baa=", "aab=", "bbba=", "abba=", "aaaa=", "ba="})
			d0 += fmt::format("{{\"prompt\": \"{}\", \"answer\": \"x\"}}\n", p);
		for (const char* p : {"9+9=", "17*3=", "42-7=", "8/2=", "99+1=", "3*33=", "5-55=", "70+7="})
			d1 += fmt::format("{{\"prompt\": \"{}\", \"answer\": \"1\"}}\n", p);
		test::write_file(tmp / "d0.jsonl", d0);
		test::write_file(tmp / "d1.jsonl", d1);
	}
	std::string recipe(bool data1 = true) const {
		return std::string("merge_method: twin_merging\nbase_model: base\nmodels:\n  - model: base\n") +
		       "  - model: e0\n    parameters: {data: d0.jsonl}\n  - model: e1\n" +
		       (data1 ? "    parameters: {data: d1.jsonl}\n" : "");
	}
	std::string build(const std::string& out, double density, uint64_t seed = 0, double lr = 1e-2, int64_t epochs = 100,
	                  bool data1 = true) {
		const test::WorkingDir here(tmp.path());
		return learned::run_twin(parse_recipe(recipe(data1), "twin.yml"), 0.3, density, lr, epochs, seed, tmp / out,
		                         false, true);
	}
	test::TempDir tmp;
};

// (a) e_i = the rank-r truncated SVD of τ_i − τ_s, r = max(1, floor(density · min(rows, cols)));
// 1-D tensors whole; the folder's model is θ_0 + τ_s; at full rank θ_0 + τ_s + e_i = θ_i.
TEST_F(Twin, ExclusivePartsAreTheTruncatedSvdOfTheDifferenceFromTheSharedModel) {
	const auto text = build("twin", 0.3);
	EXPECT_EQ(text.rfind("# Merged by weld's twin_merging", 0), 0u) << text;
	EXPECT_EQ(test::read_file(tmp / "twin" / "weld_recipe.yml"), text);
	const auto j = json::parse(test::read_file(tmp / "twin" / "twin.json"));
	EXPECT_EQ(j["format"], "weld-twin");
	EXPECT_EQ(j["version"], 1);
	EXPECT_EQ(j["experts"], 2);
	EXPECT_EQ(j["expert_names"], (json{"e0", "e1"}));
	EXPECT_EQ(j["router_layers"], (json{8, 16, 16, 2}));
	const auto base = nn::LlamaModel::load(tmp / "base", at::kDouble);
	const auto shared = nn::LlamaModel::load(tmp / "twin", at::kDouble);
	const std::vector<nn::LlamaModel> experts{nn::LlamaModel::load(tmp / "e0", at::kDouble),
	                                          nn::LlamaModel::load(tmp / "e1", at::kDouble)};
	const SafetensorsFile file(tmp / "twin" / "twin.safetensors");
	size_t svds = 0;
	for (const auto& [name, theta0] : base.parameters()) {
		const auto tau0 = experts[0].parameter(name) - theta0, tau1 = experts[1].parameter(name) - theta0;
		const auto tau_s = 0.3 * (tau0 + tau1);
		EXPECT_LT(max_abs(shared.parameter(name) - (theta0 + tau_s)), 1e-6) << name;
		for (int i = 0; i < 2; ++i) {
			const auto d = (i == 0 ? tau0 : tau1) - tau_s;
			const auto prefix = fmt::format("{}.twin{}", name, i);
			if (theta0.dim() != 2) {
				EXPECT_EQ(j["ranks"][name], 0) << name;
				EXPECT_LT(max_abs(read_f32(file, prefix + ".delta") - d), 1e-6) << name;
				continue;
			}
			const int64_t r = std::max<int64_t>(
			    1, static_cast<int64_t>(std::floor(0.3 * static_cast<double>(std::min(d.size(0), d.size(1))))));
			EXPECT_EQ(j["ranks"][name], r) << name;
			const auto [u, s, vh] = at::linalg_svd(d, false);
			const auto expected = at::matmul(u.slice(1, 0, r) * s.slice(0, 0, r), vh.slice(0, 0, r));
			const auto got = at::matmul(read_f32(file, prefix + ".u"), read_f32(file, prefix + ".v"));
			EXPECT_EQ(read_f32(file, prefix + ".u").size(1), r);
			EXPECT_LT(max_abs(got - expected), 1e-5) << name;
			EXPECT_GT(max_abs(d - expected), 1e-3) << name; // truncated indeed
			++svds;
		}
	}
	EXPECT_EQ(svds, 2u * (2 * 7 + 2)); // 7 projections per layer, embeddings and lm_head; two experts

	build("full", 1.0);
	const auto full_shared = nn::LlamaModel::load(tmp / "full", at::kDouble);
	const SafetensorsFile full(tmp / "full" / "twin.safetensors");
	for (const auto& [name, theta] : full_shared.parameters())
		for (int i = 0; i < 2; ++i) {
			const auto prefix = fmt::format("{}.twin{}", name, i);
			const auto e = theta.dim() == 2 ? at::matmul(read_f32(full, prefix + ".u"), read_f32(full, prefix + ".v"))
			                                : read_f32(full, prefix + ".delta");
			EXPECT_LT(max_abs(theta + e - experts[static_cast<size_t>(i)].parameter(name)), 1e-5) << name;
		}
}

// (b) One-hot weights on expert i at full rank: expert i's logits.
TEST_F(Twin, OneHotWeightsAtFullRankGiveTheExpertsLogits) {
	build("full", 1.0);
	auto twin = nn::TwinModel::load(tmp / "full");
	EXPECT_EQ(twin.experts(), 2u);
	EXPECT_EQ(twin.expert_names(), (std::vector<std::string>{"e0", "e1"}));
	const auto ids = at::tensor({256, 'a', 'b', '=', 'x', '\n'}, at::kLong).unsqueeze(0);
	for (int round = 0; round < 2; ++round)
		for (int64_t i = 0; i < 2; ++i) {
			const auto expert = nn::LlamaModel::load(tmp / fmt::format("e{}", i));
			auto w = at::zeros({2}, at::kFloat);
			w[i] = 1;
			const auto expected = expert.forward(ids);
			EXPECT_LT(max_abs(twin.model_for(w).forward(ids) - expected), 1e-4) << i;
			EXPECT_GT(max_abs(twin.shared().forward(ids) - expected), 1e-2) << i; // the shared model is not it
		}
	// Weights in between mix the exclusive parts linearly.
	const auto half = at::full({2}, 0.5, at::kFloat);
	const auto& mixed = twin.model_for(half);
	const auto e0 = nn::LlamaModel::load(tmp / "e0"), e1 = nn::LlamaModel::load(tmp / "e1");
	const auto name = "model.layers.0.mlp.up_proj.weight";
	EXPECT_LT(max_abs(mixed.parameter(name) - (e0.parameter(name) + e1.parameter(name)) / 2), 1e-5);
}

// (c) The router tells two prompt sets apart, and weld eval runs a twin folder routing each prompt.
TEST_F(Twin, TheRouterSeparatesTwoPromptSetsAndEvalRoutesEachOne) {
	build("twin", 0.25, 0, 1e-2, 150);
	const auto twin = nn::TwinModel::load(tmp / "twin");
	for (int64_t i = 0; i < 2; ++i) {
		const auto prompts =
		    learned::twin_router_prompts(tmp / fmt::format("d{}.jsonl", i), twin.config(), tmp / "base");
		ASSERT_EQ(prompts.size(), 8u);
		EXPECT_EQ(prompts[0].front(), 256); // BOS + prompt, no answer
		EXPECT_EQ(prompts[0].back(), '=');
		const auto w = twin.route(prompts);
		EXPECT_TRUE(w.argmax(1).eq(i).all().item<bool>()) << w;
		EXPECT_TRUE(at::allclose(w.sum(1), at::ones({8}), 1e-6, 1e-6));
		EXPECT_TRUE(at::allclose(twin.route(prompts[3]), w[3], 1e-5, 1e-6));
	}
	const auto scores = nn::evaluate_tasks(tmp / "twin", {"all"}, 3, 0, {});
	ASSERT_FALSE(scores.empty());
	for (const auto& s : scores)
		EXPECT_EQ(s.n, 3u) << s.task;
	const auto accuracy = nn::evaluate(tmp / "twin", tmp / "d1.jsonl", {});
	EXPECT_EQ(accuracy.kind, nn::EvalReport::Kind::Accuracy);
	EXPECT_EQ(accuracy.n, 8u);
	test::write_file(tmp / "text.txt", "aaa bbb\n12+34=46\n");
	const auto ppl = nn::evaluate(tmp / "twin", tmp / "text.txt", {});
	EXPECT_TRUE(std::isfinite(ppl.perplexity));
	EXPECT_EQ(ppl.sequences, 2u);
}

// A twin of two identical experts is that expert whatever the router says (full rank; weights sum
// to 1): weld eval scores it as the expert, on a model that gets some answers right.
TEST(TwinEval, IdenticalExpertsScoreAsThatExpert) {
	const auto trained = fs::path(WELD_SOURCE_DIR) / "tests/data/transformers/base";
	ASSERT_TRUE(fs::exists(trained / "config.json")) << trained;
	test::TempDir tmp;
	nn::LlamaModel::create(test::read_file(trained / "config.json"), "config", 5).save(tmp / "base");
	for (const char* e : {"e0", "e1"}) {
		fs::create_directories(tmp / e);
		for (const char* f : {"config.json", "model.safetensors"})
			fs::copy_file(trained / f, tmp / e / f);
	}
	test::write_file(tmp / "d0.txt", "add 12 and 30\nsort cab\n");
	test::write_file(tmp / "d1.txt", "reverse abc\ncount aaa\n");
	const std::string yml = "merge_method: twin_merging\nbase_model: base\nmodels:\n"
	                        "  - model: e0\n    parameters: {data: d0.txt}\n"
	                        "  - model: e1\n    parameters: {data: d1.txt}\n";
	{
		const test::WorkingDir here(tmp.path());
		learned::run_twin(parse_recipe(yml, "twin.yml"), 0.3, 1.0, 1e-2, 3, 0, tmp / "twin", false, true);
	}
	const size_t count = 8;
	const auto expected = nn::evaluate_tasks(trained, {"all"}, count, 0, {});
	const auto got = nn::evaluate_tasks(tmp / "twin", {"all"}, count, 0, {});
	ASSERT_EQ(got.size(), expected.size());
	uint64_t correct = 0;
	for (size_t t = 0; t < got.size(); ++t) {
		EXPECT_EQ(got[t].task, expected[t].task);
		EXPECT_EQ(got[t].correct, expected[t].correct) << got[t].task;
		correct += got[t].correct;
	}
	EXPECT_GT(correct, 0u);
	test::write_file(tmp / "text.txt", "add 3 and 4\nreverse xyz\n");
	const auto a = nn::evaluate(trained, tmp / "text.txt", {}), b = nn::evaluate(tmp / "twin", tmp / "text.txt", {});
	EXPECT_NEAR(b.mean_nll, a.mean_nll, 1e-4);
}

// (d) Errors: an expert without data, a malformed twin.json, a missing or misshapen tensor.
TEST_F(Twin, ErrorsNameTheModelOrTheTensor) {
	auto error = error_of([&] { build("failed", 0.2, 0, 1e-2, 1, false); });
	EXPECT_NE(error.find("model 'e1'"), std::string::npos) << error;
	EXPECT_NE(error.find("data:"), std::string::npos) << error;
	EXPECT_FALSE(fs::exists(tmp / "failed"));

	build("twin", 0.2, 0, 1e-2, 1);
	const auto original = json::parse(test::read_file(tmp / "twin" / "twin.json"));
	auto load_with = [&](const std::function<void(json&)>& edit) {
		fs::remove_all(tmp / "bad");
		fs::copy(tmp / "twin", tmp / "bad", fs::copy_options::recursive);
		auto j = original;
		edit(j);
		test::write_file(tmp / "bad" / "twin.json", j.dump());
		return error_of([&] { nn::TwinModel::load(tmp / "bad"); });
	};
	EXPECT_EQ(load_with([](json&) {}), "<no error>");
	error = load_with([](json& j) { j["ranks"]["model.layers.9.mlp.up_proj.weight"] = 1; });
	EXPECT_NE(error.find("twin.json"), std::string::npos) << error;
	EXPECT_NE(error.find("model.layers.9.mlp.up_proj.weight"), std::string::npos) << error;
	error = load_with([](json& j) { j["router_layers"] = {8, 16, 16, 2, 2}; });
	EXPECT_NE(error.find("twin.safetensors: tensor 'router."), std::string::npos) << error;  // missing or misshapen
	error = load_with([](json& j) { j["ranks"]["model.layers.0.mlp.up_proj.weight"] = 3; }); // it is 1
	EXPECT_NE(error.find("tensor 'model.layers.0.mlp.up_proj.weight.twin0.u' has shape [12, 1], expected [12, 3]"),
	          std::string::npos)
	    << error;
	error = load_with([](json& j) { j["ranks"]["model.norm.weight"] = 2; });
	EXPECT_NE(error.find("rank 2 does not fit shape [8]"), std::string::npos) << error;
	error = load_with([](json& j) { j["format"] = "other"; });
	EXPECT_NE(error.find("'format' must be \"weld-twin\""), std::string::npos) << error;
	error = load_with([](json& j) { j["expert_names"] = {"e0"}; });
	EXPECT_NE(error.find("'expert_names' must be a list of 2 names"), std::string::npos) << error;
	error = load_with([](json& j) { j["router_layers"] = {8, 16, 3}; });
	EXPECT_NE(error.find("'router_layers' must go from hidden_size 8 to 2 experts"), std::string::npos) << error;
	fs::remove(tmp / "bad" / "twin.safetensors");
	error = error_of([&] { nn::TwinModel::load(tmp / "bad"); });
	EXPECT_NE(error.find("twin.safetensors"), std::string::npos) << error;
}

// (e) The same seed, the same bytes; another seed, another router.
TEST_F(Twin, TheSameSeedWritesTheSameBytes) {
	build("a", 0.2, 7, 1e-2, 5);
	build("b", 0.2, 7, 1e-2, 5);
	build("c", 0.2, 8, 1e-2, 5);
	for (const char* f : {"twin.safetensors", "model.safetensors", "twin.json", "config.json"})
		EXPECT_EQ(test::read_file(tmp / "a" / f), test::read_file(tmp / "b" / f)) << f;
	EXPECT_NE(test::read_file(tmp / "a" / "twin.safetensors"), test::read_file(tmp / "c" / "twin.safetensors"));
	EXPECT_EQ(test::read_file(tmp / "a" / "model.safetensors"), test::read_file(tmp / "c" / "model.safetensors"));
}

} // namespace
} // namespace weld
