#include "io/model.h"
#include "io/safetensors.h"
#include "tensor/convert.h"
#include "testing/tiny_llama.h"
#include "util/error.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <unistd.h>

#include "test_util.h"

namespace weld {
namespace {

namespace fs = std::filesystem;

using test::TempDir;

// Sets an environment variable for one test and restores it afterwards.
class ScopedEnv {
public:
	ScopedEnv(const char* name, const std::string& value) : name_(name) {
		if (const char* old = std::getenv(name)) old_ = old;
		::setenv(name, value.c_str(), 1);
	}
	~ScopedEnv() {
		if (old_)
			::setenv(name_, old_->c_str(), 1);
		else
			::unsetenv(name_);
	}

private:
	const char* name_;
	std::optional<std::string> old_;
};

void write_file(const fs::path& path, const std::string& text) {
	fs::create_directories(path.parent_path());
	std::ofstream out(path, std::ios::binary);
	out << text;
}

using test::error_of;

#define EXPECT_ERROR_HAS(expr, phrase)                                                                                 \
	do {                                                                                                               \
		const std::string msg_ = error_of([&] { expr; });                                                              \
		EXPECT_NE(msg_.find(phrase), std::string::npos) << "wanted '" << (phrase) << "' in: " << msg_;                 \
	} while (0)

// One shard file holding the given F32 tensors of shape [1].
void write_shard(const fs::path& path, const std::vector<std::string>& names) {
	std::vector<OutputTensorSpec> specs;
	for (const auto& n : names)
		specs.push_back({n, DType::F32, {1}});
	const auto dir = path.parent_path() / ("tmp-" + path.filename().string());
	fs::create_directories(dir);
	{
		SafetensorsWriter w(dir, specs, UINT64_MAX);
		const std::vector<uint8_t> four(4, 0x3f);
		for (size_t i = 0; i < specs.size(); ++i)
			w.write(i, four);
		w.finish();
	}
	fs::rename(dir / "model.safetensors", path);
	fs::remove_all(dir);
}

// --- ModelFolder ---

TEST(ModelFolder, MissingFolder) {
	TempDir dir;
	EXPECT_ERROR_HAS(ModelFolder(dir.path() / "nope"), "nope: no such model folder");
	write_file(dir.path() / "file", "x");
	EXPECT_ERROR_HAS(ModelFolder(dir.path() / "file"), "file: no such model folder");
}

TEST(ModelFolder, NoWeights) {
	TempDir dir;
	EXPECT_ERROR_HAS(ModelFolder(dir.path()), ": no model.safetensors or model.safetensors.index.json");
}

TEST(ModelFolder, IndexWithParentPathShard) {
	TempDir dir;
	write_file(dir.path() / "model.safetensors.index.json", R"({"weight_map":{"a":"../x.safetensors"}})");
	EXPECT_ERROR_HAS(ModelFolder(dir.path()), "leaves the model folder");
}

TEST(ModelFolder, IndexWithAbsoluteShard) {
	TempDir dir;
	write_file(dir.path() / "model.safetensors.index.json", R"({"weight_map":{"a":"/abs.safetensors"}})");
	EXPECT_ERROR_HAS(ModelFolder(dir.path()), "model.safetensors.index.json: weight_map entry 'a': shard file "
	                                          "'/abs.safetensors' is an absolute path");
}

TEST(ModelFolder, IndexWithMissingShard) {
	TempDir dir;
	write_shard(dir.path() / "s1.safetensors", {"a"});
	write_file(dir.path() / "model.safetensors.index.json",
	           R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
	EXPECT_ERROR_HAS(ModelFolder(dir.path()),
	                 "model.safetensors.index.json: shard 's2.safetensors' listed in the index does not exist");
}

TEST(ModelFolder, TensorInIndexButNotInShard) {
	TempDir dir;
	write_shard(dir.path() / "s1.safetensors", {"a"});
	write_file(dir.path() / "model.safetensors.index.json",
	           R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}})");
	EXPECT_ERROR_HAS(ModelFolder(dir.path()), "tensor 'b' is listed in shard 's1.safetensors', but that shard has no");
}

TEST(ModelFolder, TensorInShardButNotInIndex) {
	TempDir dir;
	write_shard(dir.path() / "s1.safetensors", {"a", "extra"});
	write_file(dir.path() / "model.safetensors.index.json", R"({"weight_map":{"a":"s1.safetensors"}})");
	EXPECT_ERROR_HAS(ModelFolder(dir.path()), "s1.safetensors: tensor 'extra' is not listed in");
}

TEST(ModelFolder, TensorInTwoShards) {
	TempDir dir;
	write_shard(dir.path() / "s1.safetensors", {"a"});
	write_shard(dir.path() / "s2.safetensors", {"a", "b"});
	write_file(dir.path() / "model.safetensors.index.json",
	           R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
	EXPECT_ERROR_HAS(ModelFolder(dir.path()), "tensor 'a' is in both 's1.safetensors' and 's2.safetensors'");
}

TEST(ModelFolder, CorruptShardNamesTheFile) {
	TempDir dir;
	write_file(dir.path() / "model.safetensors", "garbage!");
	EXPECT_ERROR_HAS(ModelFolder(dir.path()), "model.safetensors: ");
}

TEST(ModelFolder, InvalidConfigJson) {
	TempDir dir;
	write_shard(dir.path() / "model.safetensors", {"a"});
	write_file(dir.path() / "config.json", "{nope");
	EXPECT_ERROR_HAS(ModelFolder(dir.path()), "config.json: invalid JSON");
}

TEST(ModelFolder, IndexInSubfolderIsAllowed) {
	TempDir dir;
	write_shard(dir.path() / "sub" / "s1.safetensors", {"a"});
	write_file(dir.path() / "model.safetensors.index.json", R"({"weight_map":{"a":"sub/s1.safetensors"}})");
	ModelFolder model(dir.path());
	ASSERT_NE(model.find("a"), nullptr);
	EXPECT_TRUE(model.sharded());
	EXPECT_FALSE(model.config().has_value());
}

// --- config.json ---

TEST(ModelConfig, ParsesFields) {
	const auto c = parse_model_config(
	    R"({"architectures":["LlamaForCausalLM"],"num_hidden_layers":4,"vocab_size":100,"tie_word_embeddings":true})",
	    "config.json");
	EXPECT_EQ(c.architecture, "LlamaForCausalLM");
	EXPECT_EQ(c.num_hidden_layers, 4);
	EXPECT_EQ(c.vocab_size, 100);
	EXPECT_TRUE(c.tie_word_embeddings);
	const auto d = parse_model_config("{}", "config.json");
	EXPECT_EQ(d.architecture, "");
	EXPECT_FALSE(d.num_hidden_layers.has_value());
	EXPECT_FALSE(d.tie_word_embeddings);
	EXPECT_EQ(d.text, "{}");
}

TEST(ModelConfig, RejectsWrongTypes) {
	EXPECT_ERROR_HAS(parse_model_config(R"({"num_hidden_layers":"4"})", "c/config.json"),
	                 "c/config.json: 'num_hidden_layers' must be a non-negative integer");
	EXPECT_ERROR_HAS(parse_model_config(R"({"vocab_size":1.5})", "config.json"), "'vocab_size' must be");
	EXPECT_ERROR_HAS(parse_model_config(R"({"architectures":"Llama"})", "config.json"), "'architectures' must be");
	EXPECT_ERROR_HAS(parse_model_config(R"({"tie_word_embeddings":1})", "config.json"), "'tie_word_embeddings'");
	EXPECT_ERROR_HAS(parse_model_config("[]", "config.json"), "not a JSON object");
	EXPECT_ERROR_HAS(parse_model_config("{", "config.json"), "config.json: invalid JSON");
}

// --- model references and the Hugging Face cache ---

class ModelReference : public ::testing::Test {
protected:
	ModelReference() : env_("HF_HUB_CACHE", cache_.path().string()) {
		repo_ = cache_.path() / "models--org--name";
		write_file(repo_ / "refs" / "main", "abc123\n");
		write_file(repo_ / "refs" / "dev", "def456");
		fs::create_directories(repo_ / "snapshots" / "abc123");
		fs::create_directories(repo_ / "snapshots" / "def456");
		fs::create_directories(repo_ / "snapshots" / "0123cafe");
	}
	TempDir cache_;
	ScopedEnv env_;
	fs::path repo_;
};

TEST_F(ModelReference, LocalFolderWins) {
	TempDir local;
	EXPECT_EQ(resolve_model_reference(local.path().string()), local.path());
}

TEST_F(ModelReference, DefaultRevisionFollowsRefsMain) {
	EXPECT_EQ(resolve_model_reference("org/name"), repo_ / "snapshots" / "abc123");
}

TEST_F(ModelReference, RevisionByRefName) {
	EXPECT_EQ(resolve_model_reference("org/name@dev"), repo_ / "snapshots" / "def456");
}

TEST_F(ModelReference, RevisionByCommitHash) {
	EXPECT_EQ(resolve_model_reference("org/name@0123cafe"), repo_ / "snapshots" / "0123cafe");
}

TEST_F(ModelReference, RepoWithoutOrg) {
	fs::create_directories(cache_.path() / "models--gpt2" / "snapshots" / "main");
	EXPECT_EQ(resolve_model_reference("gpt2"), cache_.path() / "models--gpt2" / "snapshots" / "main");
}

TEST_F(ModelReference, MissingModelSaysNeverDownloads) {
	const std::string msg = error_of([] { resolve_model_reference("other/model"); });
	EXPECT_NE(msg.find("model 'other/model' is not a local folder and is not in the Hugging Face cache"),
	          std::string::npos)
	    << msg;
	EXPECT_NE(msg.find(cache_.path().string()), std::string::npos) << msg;
	EXPECT_NE(msg.find("never downloads"), std::string::npos) << msg;
	EXPECT_NE(msg.find("`huggingface-cli download other/model`"), std::string::npos) << msg;
}

TEST_F(ModelReference, MissingRevision) {
	EXPECT_ERROR_HAS(resolve_model_reference("org/name@nope"), "revision 'nope' is not");
	EXPECT_ERROR_HAS(resolve_model_reference("org/name@nope"), "never downloads");
}

TEST_F(ModelReference, PathLikeReferencesThatDoNotExist) {
	EXPECT_ERROR_HAS(resolve_model_reference("./x"), "./x: no such model folder");
	EXPECT_ERROR_HAS(resolve_model_reference("/abs/none"), "/abs/none: no such model folder");
	EXPECT_ERROR_HAS(resolve_model_reference("a/b/c"), "a/b/c: no such model folder");
	EXPECT_ERROR_HAS(resolve_model_reference("org/name@../../x"), "no such model folder");
}

TEST(ModelReferenceEnv, HfHomeFallback) {
	TempDir home;
	ScopedEnv unset_hub("HF_HUB_CACHE", "");
	ScopedEnv hf_home("HF_HOME", home.path().string());
	fs::create_directories(home.path() / "hub" / "models--a--b" / "snapshots" / "main");
	EXPECT_EQ(resolve_model_reference("a/b"), home.path() / "hub" / "models--a--b" / "snapshots" / "main");
}

// --- tiny llama ---

std::vector<std::string> tiny_names(int layers, bool tied) {
	std::vector<std::string> names = {"model.embed_tokens.weight"};
	for (int i = 0; i < layers; ++i)
		for (const char* part :
		     {"input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
		      "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
			names.push_back("model.layers." + std::to_string(i) + "." + part + ".weight");
	names.push_back("model.norm.weight");
	if (!tied) names.push_back("lm_head.weight");
	return names;
}

TEST(TinyLlama, NamesShapesAndDeterminism) {
	TinyLlamaSpec spec;
	const auto model = make_tiny_llama(spec, 7);
	ASSERT_EQ(model.size(), tiny_names(2, false).size());
	for (size_t i = 0; i < model.size(); ++i)
		EXPECT_EQ(model[i].name, tiny_names(2, false)[i]);
	const auto shape = [&](const std::string& name) {
		for (const auto& t : model)
			if (t.name == name) return t.shape;
		return std::vector<uint64_t>{};
	};
	EXPECT_EQ(shape("model.embed_tokens.weight"), (std::vector<uint64_t>{64, 16}));
	EXPECT_EQ(shape("model.layers.1.self_attn.q_proj.weight"), (std::vector<uint64_t>{16, 16}));
	EXPECT_EQ(shape("model.layers.1.self_attn.k_proj.weight"), (std::vector<uint64_t>{8, 16}));
	EXPECT_EQ(shape("model.layers.0.mlp.gate_proj.weight"), (std::vector<uint64_t>{32, 16}));
	EXPECT_EQ(shape("model.layers.0.mlp.down_proj.weight"), (std::vector<uint64_t>{16, 32}));
	EXPECT_EQ(shape("model.norm.weight"), (std::vector<uint64_t>{16}));
	EXPECT_EQ(shape("lm_head.weight"), (std::vector<uint64_t>{64, 16}));
	for (const auto& t : model) {
		uint64_t n = 1;
		for (auto d : t.shape)
			n *= d;
		EXPECT_EQ(t.values.size(), n) << t.name;
	}
	EXPECT_NEAR(model[1].values[0], 1.0f, 0.06f); // input_layernorm
	EXPECT_LE(std::abs(model[0].values[3]), 0.5f / 4.0f);
	EXPECT_EQ(make_tiny_llama(spec, 7)[5].values, model[5].values);
	EXPECT_NE(make_tiny_llama(spec, 8)[5].values, model[5].values);

	const auto tuned = perturb(model, 0.01f, 3);
	EXPECT_NE(tuned[5].values, model[5].values);
	EXPECT_NEAR(tuned[5].values[0], model[5].values[0], 0.1f);
	EXPECT_EQ(perturb(model, 0.01f, 3)[5].values, tuned[5].values);

	spec.tie_embeddings = true;
	EXPECT_EQ(make_tiny_llama(spec, 7).size(), tiny_names(2, true).size());
}

void expect_tiny_round_trip(DType dtype, uint64_t max_shard_bytes, bool expect_sharded) {
	TempDir dir;
	TinyLlamaSpec spec;
	spec.dtype = dtype;
	const auto model = make_tiny_llama(spec, 11);
	write_tiny_llama(dir.path(), spec, model, max_shard_bytes);
	EXPECT_TRUE(fs::exists(dir.path() / "tokenizer_config.json"));
	EXPECT_TRUE(fs::exists(dir.path() / "special_tokens_map.json"));
	ModelFolder folder(dir.path());
	EXPECT_EQ(folder.sharded(), expect_sharded);
	ASSERT_TRUE(folder.config().has_value());
	EXPECT_EQ(folder.config()->architecture, "LlamaForCausalLM");
	EXPECT_EQ(folder.config()->num_hidden_layers, 2);
	EXPECT_EQ(folder.config()->vocab_size, 64);
	EXPECT_FALSE(folder.config()->tie_word_embeddings);
	const auto config = nlohmann::json::parse(folder.config()->text);
	EXPECT_EQ(config["torch_dtype"], std::string(dtype_torch_name(dtype)));
	EXPECT_EQ(config["model_type"], "llama");
	ASSERT_EQ(folder.tensors().size(), model.size());
	for (const auto& t : model) {
		const auto* found = folder.find(t.name);
		ASSERT_NE(found, nullptr) << t.name;
		EXPECT_EQ(found->info->dtype, dtype);
		EXPECT_EQ(found->info->shape, t.shape);
		std::vector<float> back(t.values.size());
		convert_to_f32(dtype, found->file->data(*found->info).data(), back.data(), back.size());
		const float tolerance = dtype == DType::F32 ? 0.0f : 0.01f;
		for (size_t i = 0; i < back.size(); ++i)
			ASSERT_NEAR(back[i], t.values[i], tolerance) << t.name << "[" << i << "]";
	}
}

TEST(TinyLlama, F32SingleFile) {
	expect_tiny_round_trip(DType::F32, UINT64_MAX, false);
}
TEST(TinyLlama, F32Sharded) {
	expect_tiny_round_trip(DType::F32, 4096, true);
}
TEST(TinyLlama, BF16SingleFile) {
	expect_tiny_round_trip(DType::BF16, UINT64_MAX, false);
}
TEST(TinyLlama, BF16Sharded) {
	expect_tiny_round_trip(DType::BF16, 2048, true);
}

} // namespace
} // namespace weld
