// PEFT LoRA adapters: reading and writing them (io/peft.h), checked against values written here.
#include "io/output_folder.h"
#include "io/peft.h"
#include "test_util.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

namespace weld::test {
namespace {

namespace fs = std::filesystem;

std::vector<float> random_values(size_t n, uint64_t seed, float scale = 1.0f) {
	std::mt19937_64 rng(seed);
	std::normal_distribution<float> normal(0.0f, scale);
	std::vector<float> v(n);
	for (float& x : v)
		x = normal(rng);
	return v;
}

LoraModule random_module(const std::string& name, uint64_t rank, uint64_t in, uint64_t out, uint64_t seed,
                         bool embedding = false) {
	LoraModule m;
	m.name = name;
	m.embedding = embedding;
	m.rank = rank;
	m.in_features = in;
	m.out_features = out;
	m.a = random_values(rank * in, seed, 0.5f);
	m.b = random_values(out * rank, seed + 1, 0.5f);
	return m;
}

PeftAdapterConfig config_with(int64_t r, double alpha, std::vector<std::string> targets) {
	PeftAdapterConfig config;
	config.r = r;
	config.lora_alpha = alpha;
	config.target_modules = std::move(targets);
	config.base_model_name_or_path = "base";
	config.task_type = "CAUSAL_LM";
	return config;
}

void write_adapter(const fs::path& dir, const PeftAdapterConfig& config, const std::vector<LoraModule>& modules,
                   DType dtype = DType::F32, const std::vector<PeftTensorBytes>& saved = {}) {
	fs::create_directories(dir);
	write_peft_adapter(dir, config, modules, dtype, saved);
}

// A raw safetensors file with the given F32 tensors, for adapters weld's writer would not make.
void write_raw_safetensors(const fs::path& path,
                           const std::vector<std::pair<std::string, std::vector<uint64_t>>>& tensors) {
	nlohmann::ordered_json header;
	uint64_t offset = 0;
	for (const auto& [name, shape] : tensors) {
		uint64_t n = 1;
		for (auto d : shape)
			n *= d;
		header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {offset, offset + 4 * n}}};
		offset += 4 * n;
	}
	std::string text = header.dump();
	while (text.size() % 8)
		text += ' ';
	std::string bytes(8, '\0');
	for (int i = 0; i < 8; i++)
		bytes[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
	write_file(path, bytes + text + std::string(offset, '\0'));
}

// --- reading and writing adapters ---

TEST(LoraAdapter, WritesAndReadsBackFactorsConfigAndScaling) {
	TempDir tmp;
	auto config = config_with(4, 8, {"q_proj", "v_proj"});
	config.rank_pattern = {{"v_proj", 2}};
	config.alpha_pattern = {{"layers.1.self_attn.v_proj", 6}};
	auto q = random_module("model.layers.0.self_attn.q_proj", 4, 16, 16, 1);
	auto v0 = random_module("model.layers.0.self_attn.v_proj", 2, 16, 8, 3);
	auto v1 = random_module("model.layers.1.self_attn.v_proj", 2, 16, 8, 5);
	auto embed = random_module("model.embed_tokens", 4, 64, 16, 7, true);
	write_adapter(tmp / "a", config, {q, v0, v1, embed});

	const auto adapter = read_peft_adapter(tmp / "a");
	ASSERT_EQ(adapter.modules.size(), 4u);
	const auto* rq = adapter.find("model.layers.0.self_attn.q_proj");
	ASSERT_TRUE(rq);
	EXPECT_EQ(rq->rank, 4u);
	EXPECT_EQ(rq->a, q.a);
	EXPECT_EQ(rq->b, q.b);
	EXPECT_DOUBLE_EQ(rq->scaling, 8.0 / 4.0);
	// rank_pattern gives v_proj r = 2; alpha_pattern gives layer 1's v_proj alpha = 6.
	EXPECT_DOUBLE_EQ(adapter.find("model.layers.0.self_attn.v_proj")->scaling, 8.0 / 2.0);
	EXPECT_DOUBLE_EQ(adapter.find("model.layers.1.self_attn.v_proj")->scaling, 6.0 / 2.0);
	const auto* re = adapter.find("model.embed_tokens");
	ASSERT_TRUE(re);
	EXPECT_TRUE(re->embedding);
	EXPECT_EQ(re->in_features, 64u);
	EXPECT_EQ(re->out_features, 16u);
	EXPECT_EQ(re->b, embed.b);

	EXPECT_EQ(adapter.config.base_model_name_or_path, "base");
	EXPECT_EQ(adapter.config.task_type, "CAUSAL_LM");
	EXPECT_EQ(adapter.config.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
	EXPECT_TRUE(adapter.config.targets("model.layers.3.self_attn.q_proj"));
	EXPECT_FALSE(adapter.config.targets("model.layers.3.self_attn.k_proj"));
	EXPECT_FALSE(adapter.config.targets("model.layers.3.self_attn.xq_proj"));

	// PEFT's tensor names.
	const SafetensorsFile file(tmp / "a" / "adapter_model.safetensors");
	EXPECT_TRUE(file.find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
	EXPECT_TRUE(file.find("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"));
	EXPECT_TRUE(file.find("base_model.model.model.embed_tokens.lora_embedding_A"));
	EXPECT_TRUE(file.find("base_model.model.model.embed_tokens.lora_embedding_B"));
	const auto json = nlohmann::json::parse(read_file(tmp / "a" / "adapter_config.json"));
	EXPECT_EQ(json["peft_type"], "LORA");
	EXPECT_EQ(json["r"], 4);
	EXPECT_EQ(json["rank_pattern"]["v_proj"], 2);
}

TEST(LoraAdapter, RsloraScalingAndRegexTargets) {
	TempDir tmp;
	write_file(tmp / "c.json", R"({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "use_rslora": true,
		"target_modules": ".*\\.(q|v)_proj", "modules_to_save": ["lm_head"], "rank_pattern": {}, "alpha_pattern": {}})");
	const auto config = parse_peft_config(read_file(tmp / "c.json"), "c.json");
	EXPECT_DOUBLE_EQ(config.scaling_of("model.layers.0.self_attn.q_proj"), 32.0 / 4.0);
	EXPECT_TRUE(config.targets("model.layers.0.self_attn.v_proj"));
	EXPECT_FALSE(config.targets("model.layers.0.self_attn.o_proj"));
	EXPECT_TRUE(config.saves("lm_head"));
	EXPECT_FALSE(config.targets("lm_head"));
	EXPECT_FALSE(config.saves("model.layers.0.mlp.up_proj"));
	// The other keys survive a rewrite.
	auto raw = nlohmann::json::parse(peft_config_json(config));
	EXPECT_EQ(raw["target_modules"], ".*\\.(q|v)_proj");
	EXPECT_EQ(raw["use_rslora"], true);
	EXPECT_EQ(raw["modules_to_save"], nlohmann::json::array({"lm_head"}));
}

TEST(LoraAdapter, SavedModulesAreReadWhole) {
	TempDir tmp;
	auto config = config_with(2, 2, {"q_proj"});
	config.modules_to_save = {"lm_head"};
	const auto head = random_values(64 * 16, 11);
	std::vector<uint8_t> bytes(head.size() * 4);
	std::memcpy(bytes.data(), head.data(), bytes.size());
	write_adapter(tmp / "a", config, {random_module("model.layers.0.self_attn.q_proj", 2, 16, 16, 1)}, DType::BF16,
	              {{"lm_head.weight", DType::F32, {64, 16}, bytes}});
	const auto adapter = read_peft_adapter(tmp / "a");
	ASSERT_EQ(adapter.saved.size(), 1u);
	EXPECT_EQ(adapter.saved[0].name, "lm_head.weight");
	EXPECT_EQ(adapter.saved[0].info->name, "base_model.model.lm_head.weight");
	const auto data = adapter.file->data(*adapter.saved[0].info);
	EXPECT_TRUE(std::equal(data.begin(), data.end(), bytes.begin()));
	EXPECT_EQ(adapter.modules[0].a.size(), 2u * 16u);
}

TEST(LoraAdapter, BadAdapterFoldersAreClearErrors) {
	TempDir tmp;
	const auto config = config_with(4, 8, {"q_proj"});
	write_adapter(tmp / "ok", config, {random_module("model.layers.0.self_attn.q_proj", 4, 16, 16, 1)});

	fs::copy(tmp / "ok", tmp / "no-weights");
	fs::remove(tmp / "no-weights" / "adapter_model.safetensors");
	EXPECT_NE(error_of([&] { read_peft_adapter(tmp / "no-weights"); }).find("no adapter_model.safetensors"),
	          std::string::npos);

	fs::copy(tmp / "ok", tmp / "bad-json");
	write_file(tmp / "bad-json" / "adapter_config.json", "{\"r\": 4,");
	auto message = error_of([&] { read_peft_adapter(tmp / "bad-json"); });
	EXPECT_NE(message.find("adapter_config.json: invalid JSON"), std::string::npos) << message;

	fs::copy(tmp / "ok", tmp / "bad-r");
	write_file(tmp / "bad-r" / "adapter_config.json", R"({"r": -2, "lora_alpha": 8, "target_modules": ["q_proj"]})");
	message = error_of([&] { read_peft_adapter(tmp / "bad-r"); });
	EXPECT_NE(message.find("'r' must be a positive integer, got -2"), std::string::npos) << message;

	// r in the config differs from the factors' rank.
	fs::copy(tmp / "ok", tmp / "r-mismatch");
	write_file(tmp / "r-mismatch" / "adapter_config.json",
	           R"({"r": 8, "lora_alpha": 8, "target_modules": ["q_proj"]})");
	message = error_of([&] { read_peft_adapter(tmp / "r-mismatch"); });
	EXPECT_NE(message.find("module 'model.layers.0.self_attn.q_proj': rank mismatch: its factors have rank 4 but "
	                       "adapter_config.json gives r = 8"),
	          std::string::npos)
	    << message;

	// A is [4, 16] but B is [16, 3].
	fs::create_directories(tmp / "ab-mismatch");
	fs::copy(tmp / "ok" / "adapter_config.json", tmp / "ab-mismatch" / "adapter_config.json");
	write_raw_safetensors(tmp / "ab-mismatch" / "adapter_model.safetensors",
	                      {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", {4, 16}},
	                       {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", {16, 3}}});
	message = error_of([&] { read_peft_adapter(tmp / "ab-mismatch"); });
	EXPECT_NE(message.find("rank mismatch: A is [4, 16] (rank 4) but B is [16, 3] (rank 3)"), std::string::npos)
	    << message;

	fs::create_directories(tmp / "lonely");
	fs::copy(tmp / "ok" / "adapter_config.json", tmp / "lonely" / "adapter_config.json");
	write_raw_safetensors(tmp / "lonely" / "adapter_model.safetensors",
	                      {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", {4, 16}},
	                       {"base_model.model.model.layers.0.mlp.weird", {4}}});
	message = error_of([&] { read_peft_adapter(tmp / "lonely"); });
	EXPECT_NE(message.find("'base_model.model.model.layers.0.mlp.weird' is neither a LoRA factor"), std::string::npos)
	    << message;

	fs::create_directories(tmp / "no-b");
	fs::copy(tmp / "ok" / "adapter_config.json", tmp / "no-b" / "adapter_config.json");
	write_raw_safetensors(tmp / "no-b" / "adapter_model.safetensors",
	                      {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", {4, 16}}});
	message = error_of([&] { read_peft_adapter(tmp / "no-b"); });
	EXPECT_NE(message.find("but no 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight'"),
	          std::string::npos)
	    << message;

	write_file(tmp / "dora.json", R"({"r": 4, "use_dora": true})");
	message = error_of([&] { parse_peft_config(read_file(tmp / "dora.json"), "dora.json"); });
	EXPECT_NE(message.find("DoRA adapters are not supported"), std::string::npos) << message;
}

} // namespace
} // namespace weld::test
