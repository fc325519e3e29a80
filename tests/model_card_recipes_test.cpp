// Model-card-style recipes (tests/data/model-card-recipes/), each leaning on one mergekit feature
// weld supports, run unchanged through the weld binary against a temporary Hugging Face cache
// holding a tiny model (or PEFT adapter) under every repository name they use. `# expect-...:`
// lines in a recipe are checks on its output (warnings, tokens, chat template, vocabulary size).
#include "io/peft.h"
#include "test_util.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <set>
#include <sstream>

namespace weld {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kLayers = 4;
constexpr int kRows = 300; // byte ids (weld moe's prompts) need 257

// Every model reference in a recipe or mergekit-moe config (model+lora split in two).
void collect_references(const YAML::Node& node, std::set<std::string>& out) {
	if (node.IsSequence())
		for (const auto& item : node)
			collect_references(item, out);
	if (!node.IsMap()) return;
	for (const auto& entry : node) {
		const auto key = entry.first.as<std::string>();
		if ((key == "model" || key == "base_model" || key == "source_model") && entry.second.IsScalar()) {
			std::stringstream parts(entry.second.as<std::string>());
			for (std::string part; std::getline(parts, part, '+');)
				out.insert(part);
		} else {
			collect_references(entry.second, out);
		}
	}
}

class ModelCardRecipes : public ::testing::Test {
protected:
	fs::path snapshot_of(const std::string& repo) {
		std::string folder = "models--" + repo;
		for (size_t pos; (pos = folder.find('/')) != std::string::npos;)
			folder.replace(pos, 1, "--");
		const auto root = dir_ / "hub" / folder;
		fs::create_directories(root / "refs");
		test::write_file(root / "refs" / "main", std::string(40, '0'));
		return root / "snapshots" / std::string(40, '0');
	}

	TinyLlamaSpec spec() const {
		TinyLlamaSpec s;
		s.layers = kLayers;
		s.vocab = kRows;
		return s;
	}

	// A tokenizer.json with tokens t0..t289, <s>, and the name's added tokens; chat models get a
	// ChatML template in tokenizer_config.json.
	static void write_tokenizer(const fs::path& dir, const std::string& repo) {
		json tokenizer = {{"version", "1.0"},
		                  {"model", {{"type", "BPE"}, {"vocab", json::object()}, {"merges", json::array()}}},
		                  {"added_tokens", json::array()}};
		int id = 0;
		for (; id < 290; ++id)
			tokenizer["model"]["vocab"][fmt::format("t{}", id)] = id;
		std::vector<std::string> added = {"<s>"};
		if (repo.find("chat") != std::string::npos) added.insert(added.end(), {"<|im_start|>", "<|im_end|>"});
		if (repo.find("code") != std::string::npos) added.insert(added.end(), {"<|fim_prefix|>", "<|fim_suffix|>"});
		for (const auto& token : added)
			tokenizer["added_tokens"].push_back({{"id", id++},
			                                     {"content", token},
			                                     {"single_word", false},
			                                     {"lstrip", false},
			                                     {"rstrip", false},
			                                     {"normalized", false},
			                                     {"special", true}});
		test::write_file(dir / "tokenizer.json", tokenizer.dump(1));
		if (repo.find("chat") != std::string::npos) {
			auto config = json::parse(test::read_file(dir / "tokenizer_config.json"));
			config["chat_template"] = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
			                          "<|im_end|>\n{% endfor %}";
			test::write_file(dir / "tokenizer_config.json", config.dump(2));
		}
	}

	// A rank-2 adapter on every layer's q_proj and v_proj of the tiny Llama.
	void write_adapter(const fs::path& dir, uint64_t seed) {
		PeftAdapterConfig config;
		config.r = 2;
		config.lora_alpha = 4;
		config.target_modules = {"q_proj", "v_proj"};
		config.task_type = "CAUSAL_LM";
		const auto s = spec();
		const uint64_t head_dim = static_cast<uint64_t>(s.hidden / s.heads);
		std::vector<LoraModule> modules;
		for (int layer = 0; layer < kLayers; ++layer)
			for (const std::string proj : {"q_proj", "v_proj"}) {
				LoraModule m;
				m.name = fmt::format("model.layers.{}.self_attn.{}", layer, proj);
				m.rank = 2;
				m.in_features = static_cast<uint64_t>(s.hidden);
				m.out_features = proj == "q_proj" ? static_cast<uint64_t>(s.hidden) : head_dim * s.kv_heads;
				for (uint64_t i = 0; i < m.rank * m.in_features; ++i)
					m.a.push_back(0.1f * static_cast<float>(std::sin(static_cast<double>(seed * 131 + i))));
				for (uint64_t i = 0; i < m.out_features * m.rank; ++i)
					m.b.push_back(0.1f * static_cast<float>(std::cos(static_cast<double>(seed * 71 + i))));
				m.scaling = 2;
				modules.push_back(std::move(m));
			}
		fs::create_directories(dir);
		write_peft_adapter(dir, config, modules, DType::BF16);
	}

	// A Mistral3-style model: the tiny Llama under language_model., a vision tower and a projector.
	static void write_multimodal(const fs::path& dir, TinyLlamaSpec s, uint64_t seed) {
		auto tensors = perturb(make_tiny_llama(s, 1), 0.02f, seed);
		for (auto& t : tensors)
			t.name = "language_model." + t.name;
		for (int layer = 0; layer < 2; ++layer)
			tensors.push_back({fmt::format("vision_tower.transformer.layers.{}.attention.q_proj.weight", layer),
			                   {8, 8},
			                   std::vector<float>(64, 0.01f * static_cast<float>(seed + layer))});
		tensors.push_back({"multi_modal_projector.linear_1.weight", {16, 8}, std::vector<float>(128, 0.5f)});
		write_tiny_llama(dir, s, tensors);
		const json config = {{"architectures", {"Mistral3ForConditionalGeneration"}},
		                     {"model_type", "mistral3"},
		                     {"text_config", {{"num_hidden_layers", s.layers}, {"hidden_size", s.hidden}}},
		                     {"vision_config", {{"num_hidden_layers", 2}}}};
		test::write_file(dir / "config.json", config.dump(2));
	}

	void add_to_cache(const std::string& repo) {
		if (!made_.insert(repo).second) return;
		const uint64_t seed = made_.size();
		const auto dir = snapshot_of(repo);
		if (repo.size() > 5 && repo.substr(repo.size() - 5) == "-lora") return write_adapter(dir, seed);
		if (repo.find("vlm") != std::string::npos) return write_multimodal(dir, spec(), seed);
		auto s = spec();
		s.dtype = DType::BF16;
		write_tiny_llama(dir, s, perturb(make_tiny_llama(s, 1), 0.02f, seed));
		if (repo.find("byte") == std::string::npos) write_tokenizer(dir, repo);
	}

	// The `# expect-KIND: VALUE` lines of a recipe.
	static std::vector<std::pair<std::string, std::string>> expectations(const std::string& text) {
		std::vector<std::pair<std::string, std::string>> out;
		std::stringstream lines(text);
		for (std::string line; std::getline(lines, line);)
			if (line.rfind("# expect-", 0) == 0 && line.find(": ") != std::string::npos)
				out.emplace_back(line.substr(9, line.find(": ") - 9), line.substr(line.find(": ") + 2));
		return out;
	}

	void check(const std::string& kind, const std::string& value, const fs::path& out, const std::string& err) {
		if (kind == "warning") {
			EXPECT_NE(err.find("weld: warning: "), std::string::npos) << err;
			EXPECT_NE(err.find(value), std::string::npos) << err;
		} else if (kind == "token") {
			EXPECT_NE(test::read_file(out / "tokenizer.json").find(fmt::format("\"{}\"", value)), std::string::npos)
			    << value;
		} else if (kind == "chat-template") {
			const auto config = json::parse(test::read_file(out / "tokenizer_config.json"));
			ASSERT_TRUE(config.contains("chat_template"));
			EXPECT_NE(config["chat_template"].get<std::string>().find(value), std::string::npos);
		} else if (kind == "vocab-multiple") {
			const auto config = json::parse(test::read_file(out / "config.json"));
			EXPECT_EQ(config["vocab_size"].get<int64_t>() % std::stoll(value), 0) << config["vocab_size"];
		} else {
			ADD_FAILURE() << "unknown expectation " << kind;
		}
	}

	test::TempDir dir_;
	std::set<std::string> made_;
};

TEST_F(ModelCardRecipes, RunUnchanged) {
	const fs::path folder = fs::path(WELD_SOURCE_DIR) / "tests" / "data" / "model-card-recipes";
	setenv("HF_HUB_CACHE", (dir_ / "hub").c_str(), 1);
	size_t ran = 0;
	for (const auto& entry : fs::directory_iterator(folder)) {
		if (entry.path().extension() != ".yml") continue;
		const auto text = test::read_file(entry.path());
		std::set<std::string> references;
		collect_references(YAML::Load(text), references);
		for (const auto& repo : references)
			add_to_cache(repo);
		const bool moe = entry.path().filename().string().rfind("moe-", 0) == 0;
		const auto out = dir_ / entry.path().stem().string();
		std::string err;
		const int status = test::run_weld(fmt::format("{} {} {}{}", moe ? "moe" : "merge", entry.path().string(),
		                                              out.string(), moe ? "" : " --threads 2"),
		                                  &err);
		ASSERT_EQ(status, 0) << entry.path() << "\n" << err;
		EXPECT_TRUE(fs::exists(out / "config.json")) << entry.path();
		const auto expected = expectations(text);
		size_t warnings = 0;
		for (size_t pos = 0; (pos = err.find("weld: warning: ", pos)) != std::string::npos; ++pos)
			warnings++;
		size_t warnings_expected = 0;
		for (const auto& [kind, value] : expected) {
			SCOPED_TRACE(fmt::format("{}: expect-{}: {}", entry.path().filename().string(), kind, value));
			check(kind, value, out, err);
			warnings_expected += kind == "warning";
		}
		EXPECT_EQ(warnings, warnings_expected) << entry.path() << "\n" << err;
		ran++;
	}
	unsetenv("HF_HUB_CACHE");
	EXPECT_GE(ran, 10u);
}

} // namespace
} // namespace weld
