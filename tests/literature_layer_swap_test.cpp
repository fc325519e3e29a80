// Layer swapping (Bandarkar et al. 2024) as passthrough slices: the bottom and top k layers come
// byte for byte from the language expert, the middle ones from the math expert.
#include "exec/merge.h"
#include "family_fixture.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace weld {
namespace {

namespace fs = std::filesystem;

using Bytes = std::map<std::string, std::vector<uint8_t>>;

// Every tensor's stored bytes, by name.
Bytes read_bytes(const fs::path& dir) {
	ModelFolder model(dir);
	Bytes out;
	for (const auto& t : model.tensors()) {
		const auto data = t.file->data(*t.info);
		out[t.info->name].assign(data.begin(), data.end());
	}
	return out;
}

class LiteratureLayerSwapTest : public ::testing::Test, protected test::Family {
protected:
	void make_experts(int layers, DType dtype) {
		spec_.layers = layers;
		spec_.dtype = dtype;
		const auto base = make_tiny_llama(spec_, 31);
		write_tiny_llama(dir_ / "language_expert", spec_, perturb(base, 0.05f, 32), 4000);
		write_tiny_llama(dir_ / "math_expert", spec_, perturb(base, 0.05f, 33));
	}

	// Layers [0, k) and [layers - k, layers) plus the tensors outside the layers must be the
	// language expert's bytes, the rest the math expert's; no tensor may be missing or extra.
	void expect_swapped(int layers, int k) {
		const Bytes out = read_bytes(dir_ / "out"), language = read_bytes(dir_ / "language_expert"),
		            math = read_bytes(dir_ / "math_expert");
		ASSERT_EQ(out.size(), language.size());
		size_t from_language = 0, from_math = 0;
		for (const auto& [name, bytes] : out) {
			int layer = -1;
			if (name.rfind("model.layers.", 0) == 0) layer = std::stoi(name.substr(13));
			const bool swapped = layer < k || layer >= layers - k; // -1: embeddings, norm, lm_head
			const Bytes& expert = swapped ? language : math;
			ASSERT_TRUE(expert.count(name)) << name;
			EXPECT_TRUE(bytes == expert.at(name))
			    << name << " is not the " << (swapped ? "language" : "math") << " expert's";
			EXPECT_FALSE(bytes == (swapped ? math : language).at(name)) << name;
			(swapped ? from_language : from_math)++;
		}
		EXPECT_EQ(from_math, static_cast<size_t>(layers - 2 * k) * 9); // 9 tensors per Llama layer
		EXPECT_GT(from_language, static_cast<size_t>(2 * k) * 9);
		const auto config = nlohmann::json::parse(test::read_file(dir_ / "out" / "config.json"));
		EXPECT_EQ(config["num_hidden_layers"], layers);
	}
};

// The same form as examples/layer-swap.yml, for 6 layers and k = 2.
const char* kSixLayerSwap = R"(# bottom and top 2 layers from the language expert, the middle 2 from the math expert
merge_method: passthrough
slices:
  - sources: # bottom k layers: language expert
      - model: language_expert
        layer_range: [0, 2]
  - sources: # middle layers: math expert
      - model: math_expert
        layer_range: [2, 4]
  - sources: # top k layers: language expert
      - model: language_expert
        layer_range: [4, 6]
)";

TEST_F(LiteratureLayerSwapTest, SwapsTopAndBottomLayersF32) {
	make_experts(6, DType::F32);
	merge(kSixLayerSwap);
	expect_swapped(6, 2);
}

TEST_F(LiteratureLayerSwapTest, SwapsTopAndBottomLayersBF16) {
	make_experts(6, DType::BF16);
	merge(kSixLayerSwap);
	expect_swapped(6, 2);
}

// The shipped example, on a 32-layer tiny family named as in it. Its dtype is bfloat16, so for
// BF16 experts the bytes match the experts' exactly.
TEST_F(LiteratureLayerSwapTest, ExampleFileSwapsFourLayersAtEachEnd) {
	const std::string example = test::read_file(std::string(WELD_SOURCE_DIR) + "/examples/layer-swap.yml");
	ASSERT_NE(example.find("merge_method: passthrough"), std::string::npos);
	make_experts(32, DType::BF16);
	merge(example);
	expect_swapped(32, 4);
}

} // namespace
} // namespace weld
