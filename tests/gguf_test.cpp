// GGUF: the reader against headers that lie, q8_0 against hand-computed blocks, Hugging Face →
// GGUF → Hugging Face round trips, merges written as GGUF and merges reading GGUF models.
#include "gguf_test_util.h"
#include "io/gguf.h"
#include "io/tokenizer_files.h"
#include "nn_test_util.h"
#include "tensor/convert.h"
#include "tensor/gguf_convert.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

namespace weld {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

// A GGUF file built field by field, remembering where each marked field starts.
struct GgufBytes {
	std::vector<uint8_t> bytes;
	std::map<std::string, size_t> at;

	template <typename T> void put(T value, const std::string& mark = "") {
		if (!mark.empty()) at[mark] = bytes.size();
		const auto* p = reinterpret_cast<const uint8_t*>(&value);
		bytes.insert(bytes.end(), p, p + sizeof(T));
	}
	void put_string(const std::string& s, const std::string& mark = "") {
		put<uint64_t>(s.size(), mark);
		bytes.insert(bytes.end(), s.begin(), s.end());
	}
	template <typename T> void set(const std::string& mark, T value) {
		std::memcpy(bytes.data() + at.at(mark), &value, sizeof(T));
	}
	std::span<const uint8_t> span() const { return bytes; }
};

// Two metadata entries (a string and an array of two strings) and one f32 tensor of 4 x 2.
GgufBytes small_gguf(uint32_t type = 0, uint64_t dim0 = 4, uint64_t data_bytes = 32) {
	GgufBytes g;
	g.put<uint32_t>(0x46554747, "magic");
	g.put<uint32_t>(3, "version");
	g.put<uint64_t>(1, "n_tensors");
	g.put<uint64_t>(2, "n_kv");
	g.put_string("general.architecture");
	g.put<uint32_t>(8);
	g.put_string("llama", "string");
	g.put_string("tokenizer.ggml.tokens");
	g.put<uint32_t>(9);
	g.put<uint32_t>(8);
	g.put<uint64_t>(2, "array_length");
	g.put_string("a");
	g.put_string("b");
	g.put_string("token_embd.weight");
	g.put<uint32_t>(2, "n_dims");
	g.put<uint64_t>(dim0, "dim0");
	g.put<uint64_t>(2, "dim1");
	g.put<uint32_t>(type, "type");
	g.put<uint64_t>(0, "offset");
	g.bytes.resize((g.bytes.size() + 31) / 32 * 32 + data_bytes, 0);
	return g;
}

TEST(GgufReader, ReadsAWellFormedHeader) {
	const auto g = small_gguf();
	const auto header = parse_gguf(g.span(), "ok.gguf");
	ASSERT_EQ(header.metadata.size(), 2u);
	EXPECT_EQ(header.find("general.architecture")->strings[0], "llama");
	EXPECT_EQ(header.find("tokenizer.ggml.tokens")->strings, (std::vector<std::string>{"a", "b"}));
	ASSERT_EQ(header.tensors.size(), 1u);
	EXPECT_EQ(header.tensors[0].dims, (std::vector<uint64_t>{4, 2}));
	EXPECT_EQ(header.tensors[0].nbytes, 32u);
	EXPECT_EQ(header.data_offset % 32, 0u);
	EXPECT_EQ(header.data_offset + 32, g.bytes.size());
}

struct Lie {
	const char* name;
	std::function<void(GgufBytes&)> corrupt;
	const char* message; // part of the expected error
};

class GgufLies : public testing::TestWithParam<Lie> {};

TEST_P(GgufLies, AreOneClearErrorAndNothingWritten) {
	const Lie& lie = GetParam();
	GgufBytes g = small_gguf();
	lie.corrupt(g);
	const auto message = test::error_of([&] { parse_gguf(g.span(), "lying.gguf"); });
	EXPECT_NE(message.find("lying.gguf"), std::string::npos) << message;
	EXPECT_NE(message.find(lie.message), std::string::npos) << message;

	// The command line says the same, and leaves no output behind.
	TempDir tmp;
	test::write_file(tmp / "lying.gguf", std::string(g.bytes.begin(), g.bytes.end()));
	std::string err;
	EXPECT_NE(test::run_weld("convert " + (tmp / "lying.gguf").string() + " " + (tmp / "out").string(), &err), 0);
	EXPECT_NE(err.find(lie.message), std::string::npos) << err;
	EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator()), 1) << "left behind";
}

INSTANTIATE_TEST_SUITE_P(
    Header, GgufLies,
    testing::Values(
        Lie{"TensorCount", [](GgufBytes& g) { g.set<uint64_t>("n_tensors", 1ull << 60); }, "tensor count"},
        Lie{"KvCount", [](GgufBytes& g) { g.set<uint64_t>("n_kv", 1ull << 60); }, "metadata count"},
        Lie{"StringLength", [](GgufBytes& g) { g.set<uint64_t>("string", 1ull << 62); }, "string length"},
        Lie{"ArrayLength", [](GgufBytes& g) { g.set<uint64_t>("array_length", 1ull << 61); }, "array length"},
        Lie{"OffsetPastTheEnd", [](GgufBytes& g) { g.set<uint64_t>("offset", 4096); }, "past the end of the data"},
        Lie{"DimsOverflow",
            [](GgufBytes& g) {
	            g.set<uint64_t>("dim0", 1ull << 40);
	            g.set<uint64_t>("dim1", 1ull << 40);
            },
            "overflow"},
        Lie{"UnknownTensorType", [](GgufBytes& g) { g.set<uint32_t>("type", 99); }, "unknown tensor type 99"},
        Lie{"TooManyDims", [](GgufBytes& g) { g.set<uint32_t>("n_dims", 9); }, "dimensions (1 to 4"},
        Lie{"Magic", [](GgufBytes& g) { g.set<uint32_t>("magic", 0x12345678); }, "not a GGUF file"},
        Lie{"Truncated", [](GgufBytes& g) { g.bytes.resize(g.at.at("dim1")); }, "the file ends"}),
    [](const testing::TestParamInfo<Lie>& param_info) { return std::string(param_info.param.name); });

TEST(GgufReader, RefusesTypesItCannotConvertByName) {
	// q4_0: 32 values in 18 bytes; ggml knows it, weld does not convert it.
	auto g = small_gguf(2, 32, 64);
	EXPECT_EQ(parse_gguf(g.span(), "q4.gguf").tensors[0].nbytes, 36u);
	TempDir tmp;
	test::write_file(tmp / "q4.gguf", std::string(g.bytes.begin(), g.bytes.end()));
	std::string err;
	EXPECT_NE(test::run_weld("convert " + (tmp / "q4.gguf").string() + " " + (tmp / "out").string(), &err), 0);
	EXPECT_NE(err.find("q4_0"), std::string::npos) << err;
	EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST(GgufQ8_0, QuantizesAsGgmlDoes) {
	// x_j = (j - 16) / 4: max |x| = 4, d = 4/127 stored as f16, q_j = round(x_j * 127/4).
	std::vector<float> x(32);
	for (int j = 0; j < 32; j++)
		x[j] = static_cast<float>(j - 16) / 4.0f;
	std::vector<uint8_t> block(34);
	ggml_from_f32(GgmlType::Q8_0, x.data(), block.data(), 32);
	uint16_t scale;
	std::memcpy(&scale, block.data(), 2);
	EXPECT_EQ(scale, f32_to_f16(4.0f / 127.0f));
	for (int j = 0; j < 32; j++)
		EXPECT_EQ(static_cast<int8_t>(block[2 + j]), static_cast<int>(std::round((j - 16) * 127.0 / 16.0))) << j;
	std::vector<float> back(32);
	ggml_to_f32(GgmlType::Q8_0, block.data(), back.data(), 32);
	for (int j = 0; j < 32; j++)
		EXPECT_NEAR(back[j], x[j], 4.0 / 127.0 / 2 + 1e-3) << j;
	EXPECT_EQ(back[0], f16_to_f32(scale) * -127.0f);
}

// The GGUF row of Hugging Face's q/k row r, written out from convert_hf_to_gguf.py's
// reshape(heads, 2, head_dim/2, cols).swapaxes(1, 2): row (h, i, j) of the result is row
// (h, j, i) of the input.
uint64_t expected_gguf_row(uint64_t r, uint64_t head_dim) {
	const uint64_t h = r / head_dim, half = head_dim / 2, j = (r % head_dim) / half, i = (r % head_dim) % half;
	return h * head_dim + i * 2 + j;
}

std::string q(const fs::path& p) {
	std::string quoted = "'"; // built step by step: GCC 12 warns (-Wrestrict) on "'" + string + "'"
	quoted += p.string();
	quoted += '\'';
	return quoted;
}

TEST(GgufRoundTrip, FolderToGgufAndBackIsExactInFloat32) {
	TempDir tmp;
	const auto tensors = test::write_gguf_ready_model(tmp / "hf");
	ASSERT_EQ(test::run_weld("convert " + q(tmp / "hf") + " " + q(tmp / "m.gguf") + " --gguf-type f32 -q"), 0);
	ASSERT_EQ(test::run_weld("convert " + q(tmp / "m.gguf") + " " + q(tmp / "back") + " -q"), 0);
	EXPECT_EQ(test::read_model(tmp / "back"), test::as_map(tensors));

	const GgufFile file(tmp / "m.gguf");
	const auto& h = file.header();
	EXPECT_EQ(h.find("general.architecture")->strings[0], "llama");
	EXPECT_EQ(h.find("llama.block_count")->ints[0], 2);
	EXPECT_EQ(h.find("llama.embedding_length")->ints[0], 32);
	EXPECT_EQ(h.find("llama.feed_forward_length")->ints[0], 64);
	EXPECT_EQ(h.find("llama.attention.head_count")->ints[0], 4);
	EXPECT_EQ(h.find("llama.attention.head_count_kv")->ints[0], 2);
	EXPECT_EQ(h.find("llama.rope.dimension_count")->ints[0], 8);
	EXPECT_FLOAT_EQ(static_cast<float>(h.find("llama.attention.layer_norm_rms_epsilon")->floats[0]), 1e-5f);
	EXPECT_EQ(h.find("tokenizer.ggml.model")->strings[0], "gpt2");
	EXPECT_EQ(h.find("tokenizer.ggml.pre")->strings[0], "llama-bpe");
	EXPECT_EQ(h.find("tokenizer.ggml.tokens")->strings.size(), static_cast<size_t>(test::kGgufVocab));
	EXPECT_EQ(h.find("tokenizer.ggml.tokens")->strings[257], "he");
	EXPECT_EQ(h.find("tokenizer.ggml.merges")->strings[1], "h e");
	EXPECT_EQ(h.find("tokenizer.ggml.token_type")->ints[test::kBosId], 3); // control
	EXPECT_EQ(h.find("tokenizer.ggml.token_type")->ints[265], 5);          // unused id
	EXPECT_EQ(h.find("tokenizer.ggml.bos_token_id")->ints[0], test::kBosId);
	EXPECT_EQ(h.find("tokenizer.ggml.eos_token_id")->ints[0], test::kEosId);
	EXPECT_EQ(h.find("tokenizer.ggml.add_bos_token")->ints[0], 1);
	ASSERT_NE(h.find("tokenizer.chat_template"), nullptr);

	// Tensor names, ggml's reversed dims, and q/k rows in llama.cpp's order.
	const auto* embd = file.find("token_embd.weight");
	ASSERT_NE(embd, nullptr);
	EXPECT_EQ(embd->dims, (std::vector<uint64_t>{32, static_cast<uint64_t>(test::kGgufVocab)}));
	for (const auto& name :
	     {"blk.1.attn_norm.weight", "blk.1.ffn_norm.weight", "blk.1.ffn_gate.weight", "blk.1.ffn_up.weight",
	      "blk.1.ffn_down.weight", "blk.1.attn_output.weight", "output_norm.weight", "output.weight"})
		EXPECT_NE(file.find(name), nullptr) << name;
	const auto hf = test::as_map(tensors);
	for (const auto& [gguf, hf_name, rows] :
	     {std::tuple{"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 32},
	      std::tuple{"blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", 16}}) {
		const auto* t = file.find(gguf);
		ASSERT_NE(t, nullptr);
		const auto* data = reinterpret_cast<const float*>(file.data(*t).data());
		const auto& src = hf.at(hf_name);
		for (uint64_t r = 0; r < static_cast<uint64_t>(rows); r++)
			for (uint64_t c = 0; c < 32; c++)
				ASSERT_EQ(data[expected_gguf_row(r, 8) * 32 + c], src[r * 32 + c]) << gguf << " row " << r;
		EXPECT_NE(data[32], src[32]) << "row 1 moved";
	}

	// The config and the tokenizer come back.
	const auto config = nlohmann::json::parse(test::read_file(tmp / "back" / "config.json"));
	EXPECT_EQ(config["architectures"][0], "LlamaForCausalLM");
	EXPECT_EQ(config["num_key_value_heads"], 2);
	EXPECT_EQ(config["vocab_size"], test::kGgufVocab);
	EXPECT_EQ(config["rms_norm_eps"], 1e-5);
	EXPECT_EQ(config["tie_word_embeddings"], false);
	const auto before = read_tokenizer_files(tmp / "hf"), after = read_tokenizer_files(tmp / "back");
	EXPECT_EQ(after.vocab, before.vocab);
	EXPECT_EQ(after.tokenizer["model"]["merges"].size(), 8u);
	EXPECT_EQ(after.tokenizer["pre_tokenizer"], before.tokenizer["pre_tokenizer"]);
	EXPECT_EQ(after.chat_template, before.chat_template);
}

TEST(GgufRoundTrip, Q8_0KeepsNormsAndStaysWithinHalfAStep) {
	TempDir tmp;
	const auto tensors = test::write_gguf_ready_model(tmp / "hf");
	ASSERT_EQ(test::run_weld("convert " + q(tmp / "hf") + " " + q(tmp / "m.gguf") + " --gguf-type q8_0 -q"), 0);
	{
		const GgufFile file(tmp / "m.gguf");
		EXPECT_EQ(file.find("blk.0.attn_q.weight")->type, 8u);
		EXPECT_EQ(file.find("blk.0.attn_norm.weight")->type, 0u);
		EXPECT_EQ(file.header().find("general.file_type")->ints[0], 7);
	}
	ASSERT_EQ(test::run_weld("convert " + q(tmp / "m.gguf") + " " + q(tmp / "back") + " -q"), 0);
	const auto back = test::read_model(tmp / "back");
	for (const auto& t : tensors) {
		const auto& values = back.at(t.name);
		ASSERT_EQ(values.size(), t.values.size());
		for (size_t b = 0; b < values.size(); b += 32) {
			float amax = 0;
			for (size_t j = b; j < std::min(values.size(), b + 32); j++)
				amax = std::max(amax, std::fabs(t.values[j]));
			// Half a step d = amax/127, plus the f16 rounding of d (relative 2^-11) times |q| <= 127.
			const double step = amax / 127.0;
			const double tolerance = t.shape.size() == 1 ? 0.0 : step * (0.5 + 127.0 / 2048.0) + 1e-7;
			for (size_t j = b; j < std::min(values.size(), b + 32); j++)
				ASSERT_NEAR(values[j], t.values[j], tolerance) << t.name << " " << j;
		}
	}
}

std::string linear_recipe(const std::string& a, const std::string& b) {
	return "merge_method: linear\ndtype: float32\nmodels:\n  - model: " + a + "\n    parameters: {weight: 0.25}\n" +
	       "  - model: " + b + "\n    parameters: {weight: 0.75}\n";
}

TEST(GgufMerge, WritesTheSameTensorsAsTheFolderOutput) {
	TempDir tmp;
	const auto a = test::write_gguf_ready_model(tmp / "a", 11), b = test::write_gguf_ready_model(tmp / "b", 12);
	test::write_file(tmp / "r.yml", linear_recipe((tmp / "a").string(), (tmp / "b").string()));
	ASSERT_EQ(test::run_weld("merge " + q(tmp / "r.yml") + " " + q(tmp / "folder") + " -q"), 0);
	std::string err;
	ASSERT_EQ(test::run_weld(
	              "merge " + q(tmp / "r.yml") + " " + q(tmp / "m.gguf") + " --format gguf --gguf-type f32 -q", &err),
	          0)
	    << err;
	ASSERT_EQ(test::run_weld("convert " + q(tmp / "m.gguf") + " " + q(tmp / "back") + " -q"), 0);
	const auto merged = test::read_model(tmp / "back");
	EXPECT_EQ(merged, test::read_model(tmp / "folder"));
	const auto& embd = merged.at("model.embed_tokens.weight");
	EXPECT_NEAR(embd[5], 0.25f * a[0].values[5] + 0.75f * b[0].values[5], 1e-6);
	EXPECT_EQ(GgufFile(tmp / "m.gguf").header().find("general.name")->strings[0], "m");

	// No overwrite without --force, and no temporary files left beside the output.
	EXPECT_NE(test::run_weld("merge " + q(tmp / "r.yml") + " " + q(tmp / "m.gguf") + " --format gguf", &err), 0);
	EXPECT_NE(err.find("already exists"), std::string::npos) << err;
	EXPECT_EQ(test::run_weld("merge " + q(tmp / "r.yml") + " " + q(tmp / "m.gguf") + " --gguf-type q8_0 --force -q"),
	          0);
	EXPECT_EQ(GgufFile(tmp / "m.gguf").find("blk.0.ffn_up.weight")->type, 8u);
	for (const auto& entry : fs::directory_iterator(tmp.path()))
		EXPECT_EQ(entry.path().filename().string().find(".weld-"), std::string::npos) << entry.path();
}

TEST(GgufMerge, ReadsGgufModelsLikeFolders) {
	TempDir tmp;
	test::write_gguf_ready_model(tmp / "a", 11);
	test::write_gguf_ready_model(tmp / "b", 12);
	ASSERT_EQ(test::run_weld("convert " + q(tmp / "a") + " " + q(tmp / "a.gguf") + " --gguf-type f32 -q"), 0);
	test::write_file(tmp / "folders.yml", linear_recipe((tmp / "a").string(), (tmp / "b").string()));
	test::write_file(tmp / "gguf.yml", linear_recipe((tmp / "a.gguf").string(), (tmp / "b").string()));
	ASSERT_EQ(test::run_weld("merge " + q(tmp / "folders.yml") + " " + q(tmp / "x") + " -q"), 0);
	std::string err;
	ASSERT_EQ(test::run_weld("merge " + q(tmp / "gguf.yml") + " " + q(tmp / "y") + " -q", &err), 0) << err;
	EXPECT_EQ(test::read_model(tmp / "y"), test::read_model(tmp / "x"));
	for (const auto& entry : fs::directory_iterator(tmp.path()))
		EXPECT_EQ(entry.path().filename().string().find(".weld-gguf"), std::string::npos) << entry.path();
}

TEST(GgufMerge, RefusesWhatGgufCannotHold) {
	TempDir tmp;
	test::write_gguf_ready_model(tmp / "a");
	std::string err;
	fs::remove(tmp / "a" / "tokenizer.json");
	EXPECT_NE(test::run_weld("convert " + q(tmp / "a") + " " + q(tmp / "a.gguf"), &err), 0);
	EXPECT_NE(err.find("tokenizer.json"), std::string::npos) << err;
	test::write_byte_level_tokenizer(tmp / "a");
	EXPECT_NE(test::run_weld("convert " + q(tmp / "a") + " " + q(tmp / "a.gguf") + " --gguf-type q4_0", &err), 0);
	EXPECT_NE(err.find("q4_0"), std::string::npos) << err;
	test::edit_config(tmp / "a", {{"architectures", {"GPT2LMHeadModel"}}});
	EXPECT_NE(test::run_weld("convert " + q(tmp / "a") + " " + q(tmp / "a.gguf"), &err), 0);
	EXPECT_NE(err.find("GPT2LMHeadModel"), std::string::npos) << err;
	EXPECT_FALSE(fs::exists(tmp / "a.gguf"));
}

} // namespace
} // namespace weld
