// The weld binary as users meet it: exit status, one-line errors, nothing left behind.
#include "test_util.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <thread>

#include <algorithm>
#include <cmath>
#include <limits>

namespace weld {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

class CliTest : public ::testing::Test {
protected:
	void SetUp() override {
		spec_.layers = 2;
		base_ = make_tiny_llama(spec_, 1);
		write_tiny_llama(dir_ / "base", spec_, base_);
		write_tiny_llama(dir_ / "a", spec_, perturb(base_, 0.1f, 2), 3000);
	}

	// Runs `weld merge` on the recipe and expects one clean error containing `expected`.
	void expect_merge_error(const std::string& recipe, const std::string& expected, const std::string& extra = "") {
		test::write_file(dir_ / "recipe.yml", recipe);
		std::string err;
		const int status = test::run_weld(
		    "merge " + (dir_ / "recipe.yml").string() + " " + (dir_ / "out").string() + " --quiet " + extra, &err);
		EXPECT_NE(status, 0);
		EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
		EXPECT_EQ(err.rfind("weld: error: ", 0), 0u) << err;
		EXPECT_NE(err.find(expected), std::string::npos) << err;
		for (const auto& entry : fs::directory_iterator(dir_.path())) {
			EXPECT_NE(entry.path().filename(), "out") << "output left behind";
			EXPECT_EQ(entry.path().filename().string().find("weld-tmp"), std::string::npos) << entry.path();
		}
	}

	// `other` is a folder under dir_, or taken as written when it starts with '@'.
	std::string models_recipe(const std::string& method, const std::string& other = "a") const {
		const auto reference = other[0] == '@' ? other.substr(1) : (dir_ / other).string();
		return "merge_method: " + method + "\nbase_model: " + (dir_ / "base").string() +
		       "\nmodels:\n  - model: " + reference + "\n    parameters: {weight: 1.0}\n";
	}

	std::string shard_of(const std::string& model, const std::string& tensor) const {
		const auto index = nlohmann::json::parse(test::read_file(dir_ / model / "model.safetensors.index.json"));
		return index["weight_map"][tensor];
	}

	TempDir dir_;
	TinyLlamaSpec spec_;
	std::vector<NamedTensor> base_;
};

TEST_F(CliTest, MergesAndReportsWhatItDid) {
	test::write_file(dir_ / "recipe.yml", models_recipe("ties"));
	std::string out;
	const auto args = "merge " + (dir_ / "recipe.yml").string() + " " + (dir_ / "merged").string();
	EXPECT_EQ(test::run_weld(args, nullptr, &out), 0);
	EXPECT_NE(out.find("merged"), std::string::npos);
	EXPECT_TRUE(fs::exists(dir_ / "merged" / "model.safetensors"));
	std::string err;
	EXPECT_NE(test::run_weld(args, &err), 0) << "existing output must be refused";
	EXPECT_NE(err.find("--force"), std::string::npos);
	EXPECT_EQ(test::run_weld(args + " --force --quiet", nullptr, &out), 0);
	EXPECT_EQ(out, "");
}

TEST_F(CliTest, ThreadsBeyondTheCoresAreCappedWithAWarningAndGiveTheSameBytes) {
	test::write_file(dir_ / "recipe.yml", models_recipe("ties"));
	const auto merge = "merge " + (dir_ / "recipe.yml").string() + " ";
	ASSERT_EQ(test::run_weld(merge + (dir_ / "one").string() + " --threads 1 --quiet"), 0);
	std::string err;
	ASSERT_EQ(test::run_weld(merge + (dir_ / "many").string() + " --threads 100000", &err), 0);
	EXPECT_NE(err.find("--threads 100000 is more than this machine's"), std::string::npos) << err;
	EXPECT_EQ(test::read_file(dir_ / "one" / "model.safetensors"),
	          test::read_file(dir_ / "many" / "model.safetensors"));
}

// --verbose shows a streamed method's notes per tensor, as it does a whole-tensor method's
// (arcee_fusion streams; its threshold and kept count were lost when it began to).
TEST_F(CliTest, VerboseShowsTheNotesOfStreamedMethods) {
	test::write_file(dir_ / "recipe.yml", models_recipe("arcee_fusion"));
	std::string err;
	ASSERT_EQ(test::run_weld("merge " + (dir_ / "recipe.yml").string() + " " + (dir_ / "out").string() +
	                             " --verbose --threads 2",
	                         &err),
	          0);
	EXPECT_NE(err.find("weld: model.layers.0.mlp.down_proj.weight: arcee_fusion: threshold "), std::string::npos)
	    << err;
	EXPECT_NE(err.find(" changes"), std::string::npos) << err;
}

// Each streaming thread's buffers come out of --memory-budget: a budget that holds one thread's
// streams on one (with a warning), and gives the same bytes.
TEST_F(CliTest, AMemoryBudgetSmallerThanTheThreadsBuffersStreamsOnFewerThreads) {
	if (std::thread::hardware_concurrency() < 2) GTEST_SKIP() << "one core: --threads 2 is capped to 1 anyway";
	test::write_file(dir_ / "recipe.yml", models_recipe("ties"));
	const auto merge = "merge " + (dir_ / "recipe.yml").string() + " ";
	ASSERT_EQ(test::run_weld(merge + (dir_ / "one").string() + " --threads 1 --quiet"), 0);
	std::string err;
	ASSERT_EQ(test::run_weld(merge + (dir_ / "small").string() + " --threads 2 --memory-budget 64KB", &err), 0);
	EXPECT_NE(err.find("holds the streaming buffers of 1 thread, not 2"), std::string::npos) << err;
	EXPECT_EQ(test::read_file(dir_ / "one" / "model.safetensors"),
	          test::read_file(dir_ / "small" / "model.safetensors"));
	err.clear();
	ASSERT_EQ(test::run_weld(merge + (dir_ / "large").string() + " --threads 2 --memory-budget 1GB", &err), 0);
	EXPECT_EQ(err.find("streaming buffers"), std::string::npos) << err;
}

// A NaN or Inf in an input is refused, naming model, tensor and element, whichever path the
// method takes: streamed (ties), whole tensor (model_stock) or copied unchanged (passthrough).
TEST_F(CliTest, NonFiniteInputsAreRefusedUnlessAllowed) {
	auto broken = perturb(base_, 0.1f, 2);
	auto& q = *std::find_if(broken.begin(), broken.end(),
	                        [](const auto& t) { return t.name == "model.layers.1.self_attn.q_proj.weight"; });
	q.values[5] = std::numeric_limits<float>::quiet_NaN();
	q.values[7] = -std::numeric_limits<float>::infinity();
	write_tiny_llama(dir_ / "broken", spec_, broken);
	for (const std::string method : {"ties", "breadcrumbs", "task_arithmetic"})
		expect_merge_error(models_recipe(method, "broken"),
		                   "model " + (dir_ / "broken").string() +
		                       ": tensor 'model.layers.1.self_attn.q_proj.weight': element 5 is NaN");
	test::write_file(dir_ / "copy.yml", "merge_method: passthrough\nslices:\n  - sources:\n      - model: " +
	                                        (dir_ / "broken").string() + "\n        layer_range: [1, 2]\n");
	std::string err;
	EXPECT_NE(test::run_weld("merge " + (dir_ / "copy.yml").string() + " " + (dir_ / "copied").string(), &err), 0);
	EXPECT_NE(err.find("element 5 is NaN"), std::string::npos) << err;
	q.values[5] = 1.0f;
	write_tiny_llama(dir_ / "inf", spec_, broken);
	expect_merge_error(models_recipe("ties", "inf"), "element 7 is -Inf");

	test::write_file(dir_ / "recipe.yml", models_recipe("task_arithmetic", "broken"));
	ASSERT_EQ(test::run_weld("merge " + (dir_ / "recipe.yml").string() + " " + (dir_ / "allowed").string() +
	                         " --allow-nonfinite --quiet"),
	          0);
	const auto merged = test::read_model(dir_ / "allowed");
	EXPECT_TRUE(std::isnan(merged.at("model.layers.1.self_attn.q_proj.weight")[5]));
}

TEST_F(CliTest, UnknownMethodListsTheValidOnes) {
	expect_merge_error(models_recipe("tiez"), "unknown method 'tiez' (valid: ");
}

TEST_F(CliTest, MissingModelSaysWeldNeverDownloads) {
	expect_merge_error(models_recipe("ties", "@nobody/nothing"), "never downloads");
}

TEST_F(CliTest, MissingLocalFolderIsNamed) {
	expect_merge_error(models_recipe("ties", "missing-folder"), "missing-folder");
}

TEST_F(CliTest, UnknownRecipeKeyListsValidKeys) {
	expect_merge_error(models_recipe("ties") + "paramters: {}\n", "unknown key 'paramters' (valid keys: ");
}

TEST_F(CliTest, UnknownParameterIsRejected) {
	expect_merge_error(models_recipe("ties") + "parameters: {desnity: 0.5}\n",
	                   "parameters: unknown parameter 'desnity' for method 'ties'; did you mean 'density'?");
}

// Model cards carry leftovers such as `weight` on methods that take none: mergekit ignores them,
// and so does weld, with one warning line naming the parameter and the method.
TEST_F(CliTest, ParameterAnotherMethodTakesIsIgnoredWithAWarning) {
	test::write_file(dir_ / "recipe.yml", models_recipe("sce") + "parameters: {density: 0.5}\n");
	std::string err;
	ASSERT_EQ(test::run_weld("merge " + (dir_ / "recipe.yml").string() + " " + (dir_ / "out").string(), &err), 0)
	    << err;
	EXPECT_NE(err.find("weld: warning: recipe: models[0].parameters: parameter 'weight' is ignored: method "
	                   "'sce' does not take it"),
	          std::string::npos)
	    << err;
	EXPECT_NE(err.find("parameter 'density' is ignored"), std::string::npos) << err;
	size_t warnings = 0; // the other lines are progress (util/progress.h)
	for (size_t at = 0; (at = err.find("weld: warning: ", at)) != std::string::npos; at++)
		warnings++;
	EXPECT_EQ(warnings, 2u) << err;
	EXPECT_TRUE(fs::exists(dir_ / "out" / "config.json"));
}

TEST_F(CliTest, MissingRequiredParameterIsNamed) {
	expect_merge_error("merge_method: slerp\nbase_model: " + (dir_ / "base").string() + "\nmodels:\n  - model: " +
	                       (dir_ / "base").string() + "\n  - model: " + (dir_ / "a").string() + "\n",
	                   "needs parameter 't'");
}

TEST_F(CliTest, WrongParameterTypeIsNamed) {
	expect_merge_error(models_recipe("ties") + "parameters: {normalize: 0.5}\n", "'normalize' must be true or false");
}

TEST_F(CliTest, MethodNeedingABaseModelSaysSo) {
	expect_merge_error("merge_method: ties\nmodels:\n  - model: " + (dir_ / "a").string() +
	                       "\n    parameters: {weight: 1}\n",
	                   "method 'ties' needs a base_model");
}

TEST_F(CliTest, SlerpWithThreeModelsIsRefused) {
	write_tiny_llama(dir_ / "c", spec_, perturb(base_, 0.1f, 5));
	expect_merge_error("merge_method: slerp\nbase_model: " + (dir_ / "base").string() + "\nparameters: {t: 0.5}\n" +
	                       "models:\n  - model: " + (dir_ / "base").string() + "\n  - model: " + (dir_ / "a").string() +
	                       "\n  - model: " + (dir_ / "c").string() + "\n",
	                   "method 'slerp' takes 2 source model(s), base included; the recipe gives 3");
}

TEST_F(CliTest, DensityOutsideItsRangeIsRefused) {
	for (const char* density : {"0", "1.5", "-0.1"}) {
		std::string recipe = models_recipe("ties");
		recipe.replace(recipe.find("{weight: 1.0}"), 13, std::string("{weight: 1.0, density: ") + density + "}");
		expect_merge_error(recipe, "parameter 'density' is");
	}
}

TEST_F(CliTest, InvalidYamlGivesTheLine) {
	expect_merge_error("merge_method: [ties\n", "invalid YAML at line");
}

// Found by fuzz/fuzz_recipe: a mapping used as a key (YAML's `? key`) escaped as yaml-cpp's
// bad-conversion exception instead of a recipe error.
TEST_F(CliTest, AComplexKeyIsARecipeError) {
	expect_merge_error("merge_method: linear\nmodels:\n  - model: a\nparameters:\n  ? {kind: zero}: 1\n",
	                   "a key must be a plain name");
	expect_merge_error("? [a, b]\n: 1\nmerge_method: linear\n", "a key must be a plain name");
}

TEST_F(CliTest, ShapeMismatchNamesTensorAndModel) {
	auto other = spec_;
	other.intermediate = spec_.intermediate * 2;
	write_tiny_llama(dir_ / "wide", other, make_tiny_llama(other, 3));
	expect_merge_error(models_recipe("ties", "wide"), "tensor 'model.layers.0.mlp.gate_proj.weight' of model");
}

TEST_F(CliTest, MissingTensorNamesTensorAndModel) {
	auto tensors = base_;
	tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
	                             [](const auto& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; }),
	              tensors.end());
	write_tiny_llama(dir_ / "partial", spec_, tensors);
	expect_merge_error(models_recipe("ties", "partial"), "'model.layers.1.mlp.up_proj.weight' is missing from model");
}

TEST_F(CliTest, TruncatedShardIsReported) {
	const auto name = shard_of("a", "model.layers.0.mlp.up_proj.weight");
	const auto shard = dir_ / "a" / name;
	ASSERT_TRUE(fs::exists(shard));
	fs::resize_file(shard, fs::file_size(shard) - 10);
	expect_merge_error(models_recipe("ties"), name);
}

TEST_F(CliTest, IndexEscapingTheFolderIsRejected) {
	auto index = nlohmann::json::parse(test::read_file(dir_ / "a" / "model.safetensors.index.json"));
	index["weight_map"]["model.norm.weight"] = "../base/model.safetensors";
	test::write_file(dir_ / "a" / "model.safetensors.index.json", index.dump());
	expect_merge_error(models_recipe("ties"), "../base/model.safetensors");
}

TEST_F(CliTest, AbsurdHeaderLengthIsRejected) {
	std::string bytes(16, '\0');
	bytes[7] = '\x7f'; // little-endian length ~ 2^63
	fs::create_directories(dir_ / "bad");
	test::write_file(dir_ / "bad" / "model.safetensors", bytes);
	expect_merge_error(models_recipe("ties", "bad"), "model.safetensors");
}

TEST_F(CliTest, ExistingOutputIsNotTouchedWithoutForce) {
	fs::create_directories(dir_ / "out");
	test::write_file(dir_ / "out" / "keep.txt", "mine");
	test::write_file(dir_ / "recipe.yml", models_recipe("ties"));
	std::string err;
	EXPECT_NE(test::run_weld("merge " + (dir_ / "recipe.yml").string() + " " + (dir_ / "out").string(), &err), 0);
	EXPECT_NE(err.find("already exists"), std::string::npos);
	EXPECT_EQ(test::read_file(dir_ / "out" / "keep.txt"), "mine");
}

TEST_F(CliTest, InspectListsTensorsAsJson) {
	std::string out;
	ASSERT_EQ(test::run_weld("inspect --json " + (dir_ / "a").string(), nullptr, &out), 0);
	const auto json = nlohmann::json::parse(out);
	EXPECT_EQ(json["architecture"], "LlamaForCausalLM");
	EXPECT_EQ(json["tensors"].size(), base_.size());
	uint64_t params = 0;
	for (const auto& t : base_)
		params += t.values.size();
	EXPECT_EQ(json["parameters"], params);
	EXPECT_EQ(json["tensors"][0]["shard"], shard_of("a", json["tensors"][0]["name"]));
}

TEST_F(CliTest, MethodsAreListed) {
	std::string out;
	ASSERT_EQ(test::run_weld("methods", nullptr, &out), 0);
	for (const char* name : {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "passthrough"})
		EXPECT_NE(out.find(name), std::string::npos) << name;
	ASSERT_EQ(test::run_weld("methods ties", nullptr, &out), 0);
	EXPECT_NE(out.find("density"), std::string::npos);
	EXPECT_NE(out.find("normalize=true"), std::string::npos);
}

TEST_F(CliTest, HelpExplainsEveryMergeOption) {
	std::string out;
	ASSERT_EQ(test::run_weld("merge --help", nullptr, &out), 0);
	for (const char* option :
	     {"--force", "--dry-run", "--threads", "--memory-budget", "--out-shard-size", "--seed", "--quiet"})
		EXPECT_NE(out.find(option), std::string::npos) << option;
}

} // namespace
} // namespace weld
