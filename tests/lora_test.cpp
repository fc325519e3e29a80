// PEFT LoRA adapters: reading and writing them (io/peft.h), weld apply-lora, model+lora recipe
// references and weld extract-lora, each checked against values computed here independently
// (plain loops, or NumPy through tests/lora_reference.py).
#include "io/output_folder.h"
#include "io/peft.h"
#include "lora/apply.h"
#include "lora/extract.h"
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
	write_file(tmp / "all.json", R"({"r": 4, "target_modules": "all-linear"})");
	const auto all = parse_peft_config(read_file(tmp / "all.json"), "all.json");
	EXPECT_TRUE(all.targets("model.layers.0.mlp.up_proj"));
	EXPECT_FALSE(all.targets("lm_head"));
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

	write_file(tmp / "ia3.json", R"({"peft_type": "IA3", "target_modules": ["k_proj"]})");
	message = error_of([&] { parse_peft_config(read_file(tmp / "ia3.json"), "ia3.json"); });
	EXPECT_NE(message.find("peft_type is 'IA3'; weld reads LoRA adapters (LORA) only"), std::string::npos) << message;

	write_file(tmp / "dora.json", R"({"r": 4, "use_dora": true})");
	message = error_of([&] { parse_peft_config(read_file(tmp / "dora.json"), "dora.json"); });
	EXPECT_NE(message.find("DoRA adapters are not supported"), std::string::npos) << message;
}

// --- weld apply-lora ---

TinyLlamaSpec tiny_spec(DType dtype = DType::F32) {
	TinyLlamaSpec spec;
	spec.dtype = dtype;
	return spec; // hidden 16, intermediate 32, vocab 64, 2 heads, 1 kv head (k/v_proj [8, 16])
}

std::vector<NamedTensor> write_base(const fs::path& dir, DType dtype = DType::F32, uint64_t seed = 1) {
	auto tensors = make_tiny_llama(tiny_spec(dtype), seed);
	write_tiny_llama(dir, tiny_spec(dtype), tensors);
	return tensors;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& values) {
	std::vector<uint8_t> bytes(values.size() * 4);
	std::memcpy(bytes.data(), values.data(), bytes.size());
	return bytes;
}

// W + scaling · B·A by a plain double loop: [out, in], or [in, out] (embedding) with
// W[i][o] += s · Σ_k B[o][k] A[k][i].
std::vector<float> applied_by_hand(const std::vector<float>& w, const LoraModule& m, double scaling) {
	std::vector<float> out = w;
	for (uint64_t o = 0; o < m.out_features; o++)
		for (uint64_t i = 0; i < m.in_features; i++) {
			double sum = 0;
			for (uint64_t k = 0; k < m.rank; k++)
				sum += static_cast<double>(m.b[o * m.rank + k]) * m.a[k * m.in_features + i];
			const size_t at = m.embedding ? i * m.out_features + o : o * m.in_features + i;
			out[at] = static_cast<float>(w[at] + scaling * sum);
		}
	return out;
}

void expect_near(const std::vector<float>& got, const std::vector<float>& want, double tolerance,
                 const std::string& what) {
	ASSERT_EQ(got.size(), want.size()) << what;
	double worst = 0;
	for (size_t j = 0; j < got.size(); j++)
		worst = std::max(worst, std::abs(static_cast<double>(got[j]) - want[j]));
	EXPECT_LE(worst, tolerance) << what;
}

// Within bfloat16's rounding: half a unit in the last place, at most 2^-8 relative.
void expect_bfloat16_of(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
	ASSERT_EQ(got.size(), want.size()) << what;
	for (size_t j = 0; j < got.size(); j++)
		ASSERT_LE(std::abs(got[j] - want[j]), std::ldexp(std::abs(want[j]), -8) + 1e-7) << what << " [" << j << "]";
}

// Folder entries of dir (to see that nothing, not even a temporary folder, was left).
std::vector<std::string> entries(const fs::path& dir) {
	std::vector<std::string> names;
	for (const auto& e : fs::directory_iterator(dir))
		names.push_back(e.path().filename().string());
	std::sort(names.begin(), names.end());
	return names;
}

TEST(LoraApply, MatchesTheUpdateComputedByHand) {
	TempDir tmp;
	const auto base = as_map(write_base(tmp / "base"));
	auto config = config_with(4, 8, {"q_proj", "v_proj", "down_proj", "embed_tokens"});
	config.rank_pattern = {{"v_proj", 2}};
	config.alpha_pattern = {{"down_proj", 3}};
	config.modules_to_save = {"lm_head"};
	const auto q = random_module("model.layers.0.self_attn.q_proj", 4, 16, 16, 1);
	const auto v = random_module("model.layers.1.self_attn.v_proj", 2, 16, 8, 3);
	const auto down = random_module("model.layers.1.mlp.down_proj", 4, 32, 16, 5);
	const auto embed = random_module("model.embed_tokens", 4, 64, 16, 7, true);
	const auto head = random_values(64 * 16, 9);
	const auto head_bytes = f32_bytes(head);
	write_adapter(tmp / "adapter", config, {q, v, down, embed}, DType::F32,
	              {{"lm_head.weight", DType::F32, {64, 16}, head_bytes}});

	std::string err;
	ASSERT_EQ(run_weld(fmt::format("apply-lora {} {} {}", (tmp / "base").string(), (tmp / "adapter").string(),
	                               (tmp / "out").string()),
	                   &err),
	          0)
	    << err;
	const auto out = read_model(tmp / "out");
	ASSERT_EQ(out.size(), base.size());
	expect_near(out.at("model.layers.0.self_attn.q_proj.weight"),
	            applied_by_hand(base.at("model.layers.0.self_attn.q_proj.weight"), q, 8.0 / 4), 1e-6, "q_proj");
	expect_near(out.at("model.layers.1.self_attn.v_proj.weight"),
	            applied_by_hand(base.at("model.layers.1.self_attn.v_proj.weight"), v, 8.0 / 2), 1e-6, "v_proj");
	expect_near(out.at("model.layers.1.mlp.down_proj.weight"),
	            applied_by_hand(base.at("model.layers.1.mlp.down_proj.weight"), down, 3.0 / 4), 1e-6, "down_proj");
	expect_near(out.at("model.embed_tokens.weight"), applied_by_hand(base.at("model.embed_tokens.weight"), embed, 2),
	            1e-6, "embed_tokens");
	EXPECT_EQ(out.at("lm_head.weight"), head);
	for (const auto& [name, values] : base)
		if (name.find("q_proj") == std::string::npos && name.find("v_proj") == std::string::npos &&
		    name.find("down_proj") == std::string::npos && name.find("embed") == std::string::npos &&
		    name != "lm_head.weight") {
			EXPECT_EQ(out.at(name), values) << name;
		}
	// An unadapted layer of an adapted kind is unchanged too.
	EXPECT_EQ(out.at("model.layers.1.self_attn.q_proj.weight"), base.at("model.layers.1.self_attn.q_proj.weight"));
	EXPECT_EQ(read_file(tmp / "out" / "config.json"), read_file(tmp / "base" / "config.json"));
	EXPECT_EQ(read_file(tmp / "out" / "tokenizer.json"), read_file(tmp / "base" / "tokenizer.json"));
}

TEST(LoraApply, RsloraFanInFanOutAndBias) {
	TempDir tmp;
	auto tensors = make_tiny_llama(tiny_spec(), 1);
	// A q_proj bias (as Qwen2 has) and an o_proj stored [in, out] as fan_in_fan_out layers are.
	tensors.push_back({"model.layers.0.self_attn.q_proj.bias", {16}, random_values(16, 21)});
	write_tiny_llama(tmp / "base", tiny_spec(), tensors);
	const auto base = as_map(tensors);
	auto config = config_with(4, 6, {"q_proj"});
	config.use_rslora = true;
	config.fan_in_fan_out = true;
	auto q = random_module("model.layers.0.self_attn.q_proj", 4, 16, 16, 1);
	q.bias = random_values(16, 23);
	write_adapter(tmp / "adapter", config, {q});
	ASSERT_EQ(run_weld(fmt::format("apply-lora {} {} {} --dtype bfloat16", (tmp / "base").string(),
	                               (tmp / "adapter").string(), (tmp / "out").string())),
	          0);
	const ModelFolder folder(tmp / "out");
	EXPECT_EQ(folder.find("model.layers.0.self_attn.q_proj.weight")->info->dtype, DType::BF16);
	EXPECT_NE(read_file(tmp / "out" / "config.json").find("\"torch_dtype\": \"bfloat16\""), std::string::npos);
	const auto out = read_model(tmp / "out");
	// fan_in_fan_out: the update is (B·A)ᵀ, the embedding layout; rslora: alpha / sqrt(r) = 3.
	auto transposed = q;
	transposed.embedding = true;
	auto want = applied_by_hand(base.at("model.layers.0.self_attn.q_proj.weight"), transposed, 3.0);
	expect_bfloat16_of(out.at("model.layers.0.self_attn.q_proj.weight"), want, "q_proj");
	std::vector<float> bias = base.at("model.layers.0.self_attn.q_proj.bias");
	for (size_t j = 0; j < bias.size(); j++)
		bias[j] += 3.0f * q.bias[j];
	expect_bfloat16_of(out.at("model.layers.0.self_attn.q_proj.bias"), bias, "q_proj bias");
}

TEST(LoraApply, BadInputIsOneClearErrorAndNothingWritten) {
	TempDir tmp;
	write_base(tmp / "base");
	const auto config = config_with(4, 8, {"q_proj"});
	const auto apply = [&](const std::string& adapter) {
		std::string err;
		const int status = run_weld(fmt::format("apply-lora {} {} {}", (tmp / "base").string(),
		                                        (tmp / adapter).string(), (tmp / "out").string()),
		                            &err);
		EXPECT_NE(status, 0) << adapter;
		EXPECT_FALSE(fs::exists(tmp / "out")) << adapter;
		EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
		return err;
	};
	write_adapter(tmp / "missing-module", config, {random_module("model.layers.7.self_attn.q_proj", 4, 16, 16, 1)});
	EXPECT_NE(apply("missing-module")
	              .find("target module 'model.layers.7.self_attn.q_proj' does not exist in the base model"),
	          std::string::npos);
	write_adapter(tmp / "no-target", config_with(4, 8, {"qkv_proj"}), {});
	EXPECT_NE(apply("no-target").find("target_modules [qkv_proj] match no module of the base model"),
	          std::string::npos);
	write_adapter(tmp / "wrong-shape", config, {random_module("model.layers.0.self_attn.k_proj", 4, 16, 16, 1)});
	EXPECT_NE(apply("wrong-shape")
	              .find("module 'model.layers.0.self_attn.k_proj': shape mismatch: A [4, 16] and B [16, 4] make an "
	                    "update of [16, 16], but the base model's 'model.layers.0.self_attn.k_proj.weight' is F32 [8, "
	                    "16]"),
	          std::string::npos);
	write_adapter(tmp / "rank", config, {random_module("model.layers.0.self_attn.q_proj", 2, 16, 16, 1)});
	EXPECT_NE(apply("rank").find("rank mismatch: its factors have rank 2 but adapter_config.json gives r = 4"),
	          std::string::npos);
	write_adapter(tmp / "json", config, {random_module("model.layers.0.self_attn.q_proj", 4, 16, 16, 1)});
	write_file(tmp / "json" / "adapter_config.json", "{\"r\": 4, \"lora_alpha\": }");
	EXPECT_NE(apply("json").find("adapter_config.json: invalid JSON"), std::string::npos);
	write_adapter(tmp / "weights", config, {random_module("model.layers.0.self_attn.q_proj", 4, 16, 16, 1)});
	fs::remove(tmp / "weights" / "adapter_model.safetensors");
	EXPECT_NE(apply("weights").find("no adapter_model.safetensors"), std::string::npos);
	EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"base", "json", "missing-module", "no-target", "rank",
	                                                         "weights", "wrong-shape"}));
}

// --- model+lora in recipes ---

// A folder as the Hugging Face cache holds a repo: models--org--name/snapshots/<commit>/, refs/main.
void put_in_hf_cache(const fs::path& cache, const std::string& repo, const fs::path& folder) {
	std::string name = "models--" + repo;
	name.replace(name.find('/'), 1, "--");
	const auto snapshot = cache / name / "snapshots" / "0123abcd";
	fs::create_directories(snapshot.parent_path());
	fs::create_directories(cache / name / "refs");
	fs::copy(folder, snapshot, fs::copy_options::recursive);
	write_file(cache / name / "refs" / "main", "0123abcd\n");
}

TEST(LoraRecipe, ModelPlusLoraEqualsApplyThenMerge) {
	TempDir tmp;
	const auto base = write_base(tmp / "base");
	write_tiny_llama(tmp / "other", tiny_spec(), perturb(base, 0.05f, 3));
	const auto config = config_with(4, 8, {"q_proj", "up_proj"});
	write_adapter(tmp / "adapter", config,
	              {random_module("model.layers.0.self_attn.q_proj", 4, 16, 16, 1),
	               random_module("model.layers.1.mlp.up_proj", 4, 16, 32, 3)});
	ASSERT_EQ(run_weld(fmt::format("apply-lora {} {} {}", (tmp / "base").string(), (tmp / "adapter").string(),
	                               (tmp / "applied").string())),
	          0);
	const auto recipe = [&](const std::string& first) {
		return fmt::format("merge_method: ties\nbase_model: {}\nmodels:\n  - model: {}\n    parameters: {{weight: 0.7, "
		                   "density: 0.6}}\n  - model: {}\n    parameters: {{weight: 0.5, density: 0.8}}\ndtype: "
		                   "bfloat16\n",
		                   (tmp / "base").string(), first, (tmp / "other").string());
	};
	write_file(tmp / "lora.yml", recipe((tmp / "base").string() + "+" + (tmp / "adapter").string()));
	write_file(tmp / "applied.yml", recipe((tmp / "applied").string()));
	fs::create_directories(tmp / "runs");
	std::string err;
	ASSERT_EQ(
	    run_weld(fmt::format("merge {} {} --quiet", (tmp / "lora.yml").string(), (tmp / "runs" / "a").string()), &err),
	    0)
	    << err;
	ASSERT_EQ(
	    run_weld(fmt::format("merge {} {} --quiet", (tmp / "applied.yml").string(), (tmp / "runs" / "b").string()),
	             &err),
	    0)
	    << err;
	EXPECT_EQ(read_file(tmp / "runs" / "a" / "model.safetensors"), read_file(tmp / "runs" / "b" / "model.safetensors"));
	// The applied model was written beside the output and is gone.
	EXPECT_EQ(entries(tmp / "runs"), (std::vector<std::string>{"a", "b"}));

	// The same with repo ids from a Hugging Face cache.
	put_in_hf_cache(tmp / "hub", "org/tiny-base", tmp / "base");
	put_in_hf_cache(tmp / "hub", "org/tiny-adapter", tmp / "adapter");
	write_file(tmp / "hub.yml", fmt::format("merge_method: linear\nmodels:\n  - model: org/tiny-base+org/tiny-adapter\n"
	                                        "    parameters: {{weight: 1.0}}\n"));
	setenv("HF_HUB_CACHE", (tmp / "hub").c_str(), 1);
	const int status =
	    run_weld(fmt::format("merge {} {} --quiet", (tmp / "hub.yml").string(), (tmp / "runs" / "c").string()), &err);
	unsetenv("HF_HUB_CACHE");
	ASSERT_EQ(status, 0) << err;
	EXPECT_EQ(read_model(tmp / "runs" / "c"), read_model(tmp / "applied"));
}

TEST(LoraRecipe, BadAdapterFailsTheMergeAndLeavesNothing) {
	TempDir tmp;
	write_base(tmp / "base");
	write_adapter(tmp / "adapter", config_with(4, 8, {"q_proj"}),
	              {random_module("model.layers.0.self_attn.q_proj", 4, 16, 20, 1)});
	fs::create_directories(tmp / "runs");
	const auto merge = [&](const std::string& model) {
		write_file(tmp / "recipe.yml", fmt::format("merge_method: linear\nmodels:\n  - model: {}\n    parameters: "
		                                           "{{weight: 1.0}}\n",
		                                           model));
		std::string err;
		EXPECT_NE(
		    run_weld(fmt::format("merge {} {} --quiet", (tmp / "recipe.yml").string(), (tmp / "runs" / "out").string()),
		             &err),
		    0);
		EXPECT_EQ(entries(tmp / "runs"), std::vector<std::string>{});
		return err;
	};
	const auto base = (tmp / "base").string(), adapter = (tmp / "adapter").string();
	auto err = merge(base + "+" + adapter);
	EXPECT_NE(err.find("module 'model.layers.0.self_attn.q_proj': shape mismatch"), std::string::npos) << err;
	err = merge(base + "+" + adapter + "+" + adapter);
	EXPECT_NE(err.find("expected MODEL+ADAPTER, one '+' between a model and a LoRA adapter"), std::string::npos) << err;
	err = merge(base + "+" + (tmp / "nowhere").string());
	EXPECT_NE(err.find("nowhere"), std::string::npos) << err;

	// The adapter applies, then planning fails on another model: the applied copy goes too.
	write_adapter(tmp / "good", config_with(4, 8, {"q_proj"}),
	              {random_module("model.layers.0.self_attn.q_proj", 4, 16, 16, 1)});
	auto spec = tiny_spec();
	spec.intermediate = 48;
	write_tiny_llama(tmp / "wide", spec, make_tiny_llama(spec, 1));
	write_file(tmp / "recipe.yml", fmt::format("merge_method: linear\nmodels:\n  - model: {}+{}\n    parameters: "
	                                           "{{weight: 1.0}}\n  - model: {}\n    parameters: {{weight: 1.0}}\n",
	                                           base, (tmp / "good").string(), (tmp / "wide").string()));
	EXPECT_NE(
	    run_weld(fmt::format("merge {} {} --quiet", (tmp / "recipe.yml").string(), (tmp / "runs" / "out").string()),
	             &err),
	    0);
	EXPECT_NE(err.find("gate_proj"), std::string::npos) << err;
	EXPECT_EQ(entries(tmp / "runs"), std::vector<std::string>{});
}

// --- weld extract-lora ---

bool is_projection(const std::string& name) {
	return name.find("_proj.weight") != std::string::npos;
}

// The base plus an exact rank-`rank` update U·V on every projection (and on the embedding when
// asked); other tensors get small full-rank noise.
std::vector<NamedTensor> low_rank_finetune(const std::vector<NamedTensor>& base, uint64_t rank, uint64_t seed,
                                           bool low_rank_embedding = false) {
	auto out = base;
	for (auto& t : out) {
		const bool low_rank = is_projection(t.name) || (low_rank_embedding && t.name == "model.embed_tokens.weight");
		if (!low_rank) {
			const auto noise = random_values(t.values.size(), seed++, 0.01f);
			for (size_t j = 0; j < noise.size(); j++)
				t.values[j] += noise[j];
			continue;
		}
		const uint64_t rows = t.shape[0], cols = t.shape[1];
		const auto u = random_values(rows * rank, seed++, 0.3f), v = random_values(rank * cols, seed++, 0.3f);
		for (uint64_t i = 0; i < rows; i++)
			for (uint64_t j = 0; j < cols; j++)
				for (uint64_t k = 0; k < rank; k++)
					t.values[i * cols + j] += u[i * rank + k] * v[k * cols + j];
	}
	return out;
}

// B·A of a module as the weight's update: [out, in], or [in, out] for an embedding.
std::vector<float> update_of(const LoraModule& m) {
	return applied_by_hand(std::vector<float>(m.out_features * m.in_features, 0.0f), m, 1.0);
}

std::vector<float> difference(const std::vector<float>& a, const std::vector<float>& b) {
	std::vector<float> d(a.size());
	for (size_t j = 0; j < a.size(); j++)
		d[j] = a[j] - b[j];
	return d;
}

std::string extract(const TempDir& tmp, const std::string& finetune, const std::string& out, const std::string& options,
                    int* status = nullptr) {
	std::string err;
	const int rc = run_weld(fmt::format("extract-lora {} {} {} {}", (tmp / "base").string(), (tmp / finetune).string(),
	                                    (tmp / out).string(), options),
	                        &err);
	if (status)
		*status = rc;
	else
		EXPECT_EQ(rc, 0) << err;
	return err;
}

TEST(LoraExtract, ExactRankDeltaIsReconstructedAndAppliesBack) {
	TempDir tmp;
	const auto base = write_base(tmp / "base");
	const auto finetune = low_rank_finetune(base, 3, 100);
	write_tiny_llama(tmp / "ft", tiny_spec(), finetune);
	extract(tmp, "ft", "lora", "--max-rank 8 --sv-epsilon 1e-4");

	const auto adapter = read_peft_adapter(tmp / "lora");
	const auto b = as_map(base), f = as_map(finetune);
	size_t projections = 0;
	for (const auto& t : base)
		if (is_projection(t.name)) {
			const auto* m = adapter.find(t.name.substr(0, t.name.size() - 7));
			ASSERT_TRUE(m) << t.name;
			EXPECT_EQ(m->rank, 3u) << t.name;
			EXPECT_DOUBLE_EQ(m->scaling, 1.0);
			expect_near(update_of(*m), difference(f.at(t.name), b.at(t.name)), 1e-4, t.name);
			projections++;
		}
	EXPECT_EQ(adapter.modules.size(), projections);
	// mergekit's config: r = lora_alpha = the largest rank, the embeddings and norms saved whole.
	const auto json = nlohmann::json::parse(read_file(tmp / "lora" / "adapter_config.json"));
	EXPECT_EQ(json["r"], 3);
	EXPECT_EQ(json["lora_alpha"], 3);
	EXPECT_EQ(json["rank_pattern"], nlohmann::json::object());
	EXPECT_EQ(json["target_modules"],
	          nlohmann::json({"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"}));
	auto saved = json["modules_to_save"].get<std::vector<std::string>>();
	std::sort(saved.begin(), saved.end());
	EXPECT_EQ(saved, (std::vector<std::string>{"embed_tokens", "input_layernorm", "lm_head", "norm",
	                                           "post_attention_layernorm"}));
	EXPECT_EQ(json["base_model_name_or_path"], (tmp / "base").string());
	EXPECT_EQ(json["task_type"], "CAUSAL_LM");
	EXPECT_EQ(json["peft_type"], "LORA");
	EXPECT_EQ(adapter.saved.size(), base.size() - projections);
	EXPECT_TRUE(fs::exists(tmp / "lora" / "README.md"));

	// Applied back to the base, the adapter gives the fine-tune.
	ASSERT_EQ(run_weld(fmt::format("apply-lora {} {} {}", (tmp / "base").string(), (tmp / "lora").string(),
	                               (tmp / "back").string())),
	          0);
	const auto back = read_model(tmp / "back");
	for (const auto& t : finetune)
		expect_near(back.at(t.name), t.values, 1e-4, t.name);

	// The randomized SVD finds the same exact-rank update.
	extract(tmp, "ft", "lora-randomized", "--max-rank 8 --sv-epsilon 1e-4 --svd randomized");
	const auto randomized = read_peft_adapter(tmp / "lora-randomized");
	for (const auto& m : randomized.modules)
		expect_near(update_of(m), update_of(*adapter.find(m.name)), 1e-4, m.name);
}

bool have_numpy() {
	static const bool ok = std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
	return ok;
}

nlohmann::json numpy_truncated_svd(const TempDir& tmp, int k, const std::vector<std::string>& tensors) {
	std::string command = fmt::format("/usr/bin/python3 {}/tests/lora_reference.py {} {} {}", WELD_SOURCE_DIR,
	                                  (tmp / "base").string(), (tmp / "ft").string(), k);
	for (const auto& t : tensors)
		command += " " + t;
	command += " > " + (tmp / "numpy.json").string();
	EXPECT_EQ(std::system(command.c_str()), 0) << command;
	return nlohmann::json::parse(read_file(tmp / "numpy.json"));
}

double row_norm_squared(const std::vector<float>& m, size_t row, size_t cols) {
	double sum = 0;
	for (size_t j = 0; j < cols; j++)
		sum += static_cast<double>(m[row * cols + j]) * m[row * cols + j];
	return sum;
}

TEST(LoraExtract, MaxRankTruncationEqualsNumPyTopK) {
	if (!have_numpy()) GTEST_SKIP() << "needs /usr/bin/python3 with numpy";
	TempDir tmp;
	const auto base = write_base(tmp / "base");
	write_tiny_llama(tmp / "ft", tiny_spec(), perturb(base, 0.05f, 7));
	extract(tmp, "ft", "lora", "--max-rank 2 --threads 1");
	extract(tmp, "ft", "lora-threads", "--max-rank 2 --threads 3");
	EXPECT_EQ(read_file(tmp / "lora" / "adapter_model.safetensors"),
	          read_file(tmp / "lora-threads" / "adapter_model.safetensors"));
	extract(tmp, "ft", "lora-plain", "--max-rank 2 --no-distribute-scale");

	const std::vector<std::string> names = {
	    "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
	    "model.layers.1.mlp.down_proj.weight", "model.layers.0.mlp.gate_proj.weight"};
	const auto want = numpy_truncated_svd(tmp, 2, names);
	const auto adapter = read_peft_adapter(tmp / "lora"), plain = read_peft_adapter(tmp / "lora-plain");
	for (const auto& name : names) {
		const auto module = name.substr(0, name.size() - 7);
		const auto& ref = want.at(name);
		const auto* m = adapter.find(module);
		ASSERT_TRUE(m);
		EXPECT_EQ(m->rank, 2u);
		expect_near(update_of(*m), ref["recon"].get<std::vector<float>>(), 1e-5, name);
		const auto* p = plain.find(module);
		expect_near(update_of(*p), ref["recon"].get<std::vector<float>>(), 1e-5, name + " (no-distribute-scale)");
		for (size_t k = 0; k < 2; k++) {
			const double s = ref["s"][k].get<double>();
			// √S·Vᵀ: row k of A has squared norm s_k; S·Vᵀ with B = U: norm s_k, and B's columns are unit.
			EXPECT_NEAR(row_norm_squared(m->a, k, m->in_features), s, 1e-5 * s) << name;
			EXPECT_NEAR(std::sqrt(row_norm_squared(p->a, k, p->in_features)), s, 1e-5 * s) << name;
			double column = 0;
			for (size_t i = 0; i < p->out_features; i++)
				column += static_cast<double>(p->b[i * 2 + k]) * p->b[i * 2 + k];
			EXPECT_NEAR(column, 1.0, 1e-5) << name;
		}
	}

	// A max-rank above some modules' size: each keeps min(m, n), and rank_pattern and
	// alpha_pattern give the smaller ones their own rank, so that every scaling is 1.
	extract(tmp, "ft", "lora-full", "--max-rank 20");
	const auto json = nlohmann::json::parse(read_file(tmp / "lora-full" / "adapter_config.json"));
	EXPECT_EQ(json["r"], 16);
	EXPECT_EQ(json["rank_pattern"]["model.layers.0.self_attn.k_proj"], 8);
	EXPECT_EQ(json["alpha_pattern"]["model.layers.1.self_attn.v_proj"], 8);
	EXPECT_EQ(json["rank_pattern"].size(), 4u); // k_proj and v_proj of two layers
	ASSERT_EQ(run_weld(fmt::format("apply-lora {} {} {}", (tmp / "base").string(), (tmp / "lora-full").string(),
	                               (tmp / "back").string())),
	          0);
	const auto back = read_model(tmp / "back"), ft = read_model(tmp / "ft");
	for (const auto& [name, values] : ft)
		expect_near(back.at(name), values, 1e-5, name);
}

TEST(LoraExtract, EmbedLoraAndModuleRegexes) {
	TempDir tmp;
	const auto base = write_base(tmp / "base");
	const auto finetune = low_rank_finetune(base, 2, 300, true);
	write_tiny_llama(tmp / "ft", tiny_spec(), finetune);
	extract(tmp, "ft", "lora",
	        "--embed-lora --max-rank 4 -i 'layers\\.0\\.' -i 'embed_tokens|lm_head' -e k_proj --skip-undecomposable");
	const SafetensorsFile file(tmp / "lora" / "adapter_model.safetensors");
	std::vector<std::string> names;
	for (const auto& t : file.tensors())
		names.push_back(t.name);
	std::sort(names.begin(), names.end());
	std::vector<std::string> want = {"base_model.model.lm_head.lora_A.weight", "base_model.model.lm_head.lora_B.weight",
	                                 "base_model.model.model.embed_tokens.lora_embedding_A",
	                                 "base_model.model.model.embed_tokens.lora_embedding_B"};
	for (const char* m :
	     {"self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
		for (const char* f : {"lora_A", "lora_B"})
			want.push_back(fmt::format("base_model.model.model.layers.0.{}.{}.weight", m, f));
	std::sort(want.begin(), want.end());
	EXPECT_EQ(names, want);
	EXPECT_EQ(file.find("base_model.model.model.embed_tokens.lora_embedding_A")->shape, (std::vector<uint64_t>{4, 64}));
	EXPECT_EQ(file.find("base_model.model.model.embed_tokens.lora_embedding_B")->shape, (std::vector<uint64_t>{16, 4}));
	const auto adapter = read_peft_adapter(tmp / "lora");
	const auto* embed = adapter.find("model.embed_tokens");
	ASSERT_TRUE(embed && embed->embedding);
	const auto b = as_map(base), f = as_map(finetune);
	expect_near(update_of(*embed), difference(f.at("model.embed_tokens.weight"), b.at("model.embed_tokens.weight")),
	            1e-4, "embed_tokens");
	const auto json = nlohmann::json::parse(read_file(tmp / "lora" / "adapter_config.json"));
	EXPECT_EQ(json["modules_to_save"], nlohmann::json::array());
	EXPECT_EQ(json["target_modules"], nlohmann::json({"down_proj", "embed_tokens", "gate_proj", "lm_head", "o_proj",
	                                                  "q_proj", "up_proj", "v_proj"}));
}

TEST(LoraExtract, BiasDifferencesAndSavedModules) {
	TempDir tmp;
	auto base = make_tiny_llama(tiny_spec(), 1);
	base.push_back({"model.layers.1.self_attn.v_proj.bias", {8}, random_values(8, 31)});
	write_tiny_llama(tmp / "base", tiny_spec(), base);
	const auto finetune = low_rank_finetune(base, 2, 500);
	write_tiny_llama(tmp / "ft", tiny_spec(), finetune);
	extract(tmp, "ft", "lora", "--max-rank 2 --save-module o_proj --save-module model.layers.0.mlp.up_proj");
	const auto adapter = read_peft_adapter(tmp / "lora");
	const auto b = as_map(base), f = as_map(finetune);
	// mergekit writes a decomposed module's bias difference as lora_B.bias.
	const auto* v = adapter.find("model.layers.1.self_attn.v_proj");
	ASSERT_TRUE(v);
	expect_near(v->bias,
	            difference(f.at("model.layers.1.self_attn.v_proj.bias"), b.at("model.layers.1.self_attn.v_proj.bias")),
	            1e-7, "v_proj bias");
	// --save-module by last name part or full name: stored whole, not decomposed.
	for (const char* name : {"model.layers.0.self_attn.o_proj.weight", "model.layers.1.self_attn.o_proj.weight",
	                         "model.layers.0.mlp.up_proj.weight"}) {
		const auto* saved = adapter.find_saved(name);
		ASSERT_TRUE(saved) << name;
		const auto bytes = adapter.file->data(*saved->info);
		EXPECT_EQ(std::vector<uint8_t>(bytes.begin(), bytes.end()), f32_bytes(f.at(name))) << name;
	}
	EXPECT_FALSE(adapter.find("model.layers.0.self_attn.o_proj"));
	EXPECT_TRUE(adapter.find("model.layers.1.mlp.up_proj"));
	const auto json = nlohmann::json::parse(read_file(tmp / "lora" / "adapter_config.json"));
	const auto saved = json["modules_to_save"].get<std::vector<std::string>>();
	EXPECT_EQ(std::vector<std::string>(saved.begin(), saved.begin() + 2),
	          (std::vector<std::string>{"o_proj", "model.layers.0.mlp.up_proj"}));
	EXPECT_EQ(json["target_modules"],
	          nlohmann::json({"down_proj", "gate_proj", "k_proj", "q_proj", "up_proj", "v_proj"}));
	ASSERT_EQ(run_weld(fmt::format("apply-lora {} {} {}", (tmp / "base").string(), (tmp / "lora").string(),
	                               (tmp / "back").string())),
	          0);
	const auto back = read_model(tmp / "back");
	expect_near(back.at("model.layers.1.self_attn.v_proj.bias"), f.at("model.layers.1.self_attn.v_proj.bias"), 1e-6,
	            "v_proj bias applied");
	expect_near(back.at("model.layers.1.self_attn.v_proj.weight"), f.at("model.layers.1.self_attn.v_proj.weight"), 1e-4,
	            "v_proj applied");
}

TEST(LoraExtract, RandomizedSvdIsWithinToleranceOfTheExactOne) {
	// 300 × 200 with a decaying spectrum: Σ_k 0.8^k u_k v_kᵀ over 60 random directions.
	const size_t rows = 300, cols = 200, terms = 60;
	const auto u = random_values(rows * terms, 1), v = random_values(terms * cols, 2);
	linalg::MatrixF m(rows, cols);
	for (size_t i = 0; i < rows; i++)
		for (size_t k = 0; k < terms; k++) {
			const float w = static_cast<float>(std::pow(0.8, k)) * u[i * terms + k];
			for (size_t j = 0; j < cols; j++)
				m(i, j) += w * v[k * cols + j];
		}
	const auto exact = decompose_task_vector(m, 10, 0, true, LoraSvd::Full, 5);
	const auto randomized = decompose_task_vector(m, 10, 0, true, LoraSvd::Randomized, 5);
	EXPECT_FALSE(exact.randomized);
	EXPECT_TRUE(randomized.randomized);
	ASSERT_EQ(randomized.rank, 10u);
	for (size_t k = 0; k < 10; k++)
		EXPECT_NEAR(randomized.singular_values[k], exact.singular_values[k], 1e-3 * exact.singular_values[0]) << k;
	// Both approximations are (near) the best rank-10 one: their errors agree within 1%.
	const auto error = [&](const ExtractedFactors& f) {
		double sum = 0;
		for (size_t i = 0; i < rows; i++)
			for (size_t j = 0; j < cols; j++) {
				double r = m(i, j);
				for (size_t k = 0; k < f.rank; k++)
					r -= static_cast<double>(f.b[i * f.rank + k]) * f.a[k * cols + j];
				sum += r * r;
			}
		return std::sqrt(sum);
	};
	EXPECT_LE(error(randomized), 1.01 * error(exact));
	// Auto picks the randomized SVD from 1024 on.
	EXPECT_TRUE(decompose_task_vector(linalg::MatrixF(1024, 1024), 8, 0, true, LoraSvd::Auto, 1).randomized);
	EXPECT_FALSE(decompose_task_vector(linalg::MatrixF(300, 200), 8, 0, true, LoraSvd::Auto, 1).randomized);
}

TEST(LoraExtract, BadInputIsOneClearErrorAndNothingWritten) {
	TempDir tmp;
	write_base(tmp / "base");
	auto spec = tiny_spec();
	spec.intermediate = 48;
	write_tiny_llama(tmp / "wide", spec, make_tiny_llama(spec, 1));
	int status = 0;
	auto err = extract(tmp, "wide", "out", "", &status);
	EXPECT_NE(status, 0);
	EXPECT_NE(err.find("tensor 'model.layers.0.mlp.gate_proj.weight': the fine-tune's is F32 [48, 16], the base "
	                   "model's F32 [32, 16]"),
	          std::string::npos)
	    << err;
	err = extract(tmp, "base", "out", "--max-rank 0", &status);
	EXPECT_NE(status, 0);
	EXPECT_NE(err.find("--max-rank must be at least 1"), std::string::npos) << err;
	err = extract(tmp, "base", "out", "-e '('", &status);
	EXPECT_NE(status, 0);
	EXPECT_NE(err.find("--exclude-regex: '(' is not a valid regular expression"), std::string::npos) << err;
	EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"base", "wide"}));
}

} // namespace
} // namespace weld::test
