#include "io/model.h"
#include "io/safetensors.h"
#include "util/error.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <thread>
#include <unistd.h>

#include "test_util.h"

namespace weld {
namespace {

namespace fs = std::filesystem;

using test::TempDir;

std::string le64(uint64_t n) {
	std::string out(8, '\0');
	for (int i = 0; i < 8; ++i, n >>= 8)
		out[i] = static_cast<char>(n & 0xFF);
	return out;
}

// A safetensors file from a header text and a data region size (data bytes are a pattern).
std::string st_bytes(const std::string& header, size_t data_bytes) {
	std::string data(data_bytes, '\0');
	for (size_t i = 0; i < data_bytes; ++i)
		data[i] = static_cast<char>(i * 7 + 1);
	return le64(header.size()) + header + data;
}

void write_file(const fs::path& path, const std::string& bytes) {
	std::ofstream out(path, std::ios::binary);
	out << bytes;
}

std::string read_file(const fs::path& path) {
	std::ifstream in(path, std::ios::binary);
	return {std::istreambuf_iterator<char>(in), {}};
}

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
	std::vector<uint8_t> v(n);
	for (size_t i = 0; i < n; ++i)
		v[i] = static_cast<uint8_t>(seed + i * 31);
	return v;
}

using test::error_of;

// --- corrupt-file catalogue: each kind must be a one-line weld::Error naming the file ---

class SafetensorsCorrupt : public ::testing::Test {
protected:
	void expect_corrupt(const std::string& bytes, const std::string& phrase) {
		const auto path = dir_.path() / "broken-file.safetensors";
		write_file(path, bytes);
		const std::string msg = error_of([&] { SafetensorsFile file(path); });
		EXPECT_NE(msg.find("broken-file.safetensors"), std::string::npos) << msg;
		EXPECT_NE(msg.find(phrase), std::string::npos) << "wanted '" << phrase << "' in: " << msg;
		EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
	}
	TempDir dir_;
};

const std::string kOk = R"("a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})";

TEST_F(SafetensorsCorrupt, ValidBaselineParses) {
	const auto path = dir_.path() / "ok.safetensors";
	write_file(path, st_bytes("{" + kOk + "}", 16));
	SafetensorsFile file(path);
	ASSERT_EQ(file.tensors().size(), 1u);
	EXPECT_EQ(file.tensors()[0].shape, (std::vector<uint64_t>{2, 2}));
}

TEST_F(SafetensorsCorrupt, EmptyFile) {
	expect_corrupt("", "empty");
}
TEST_F(SafetensorsCorrupt, ShorterThanEightBytes) {
	expect_corrupt("abc", "too short");
}
TEST_F(SafetensorsCorrupt, HeaderLengthPastEndOfFile) {
	expect_corrupt(le64(100) + "{}", "runs past the end");
}

TEST_F(SafetensorsCorrupt, AbsurdHeaderLengthIsRefusedWithoutAllocating) {
	expect_corrupt(le64(1ull << 63) + "{}", "exceeds the limit");
	expect_corrupt(le64(UINT64_MAX) + "{}", "exceeds the limit");
	expect_corrupt(le64(kMaxHeaderBytes + 1) + "{}", "exceeds the limit");
}

TEST_F(SafetensorsCorrupt, HeaderNotStartingWithBrace) {
	expect_corrupt(st_bytes(" {}", 0), "does not start with '{'");
}
TEST_F(SafetensorsCorrupt, ZeroLengthHeader) {
	expect_corrupt(st_bytes("", 0), "does not start with '{'");
}
TEST_F(SafetensorsCorrupt, InvalidJson) {
	expect_corrupt(st_bytes("{\"a\": ", 0), "invalid JSON");
}
TEST_F(SafetensorsCorrupt, TrailingGarbageAfterJson) {
	expect_corrupt(st_bytes("{} x", 0), "invalid JSON");
}

TEST_F(SafetensorsCorrupt, NonObjectTensorEntry) {
	expect_corrupt(st_bytes(R"({"a": [1, 2]})", 0), "tensor 'a': entry is an array, not an object");
}

TEST_F(SafetensorsCorrupt, UnknownDtype) {
	expect_corrupt(st_bytes(R"({"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4), "unknown dtype 'F33'");
}

TEST_F(SafetensorsCorrupt, MissingField) {
	expect_corrupt(st_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "missing 'data_offsets'");
}

TEST_F(SafetensorsCorrupt, NegativeShape) {
	expect_corrupt(st_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
	               "shape[0] is -1, not a non-negative integer");
}

TEST_F(SafetensorsCorrupt, FloatShape) {
	expect_corrupt(st_bytes(R"({"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", 4),
	               "shape[0] is a float, not a non-negative integer");
}

TEST_F(SafetensorsCorrupt, NonIntegerShape) {
	expect_corrupt(st_bytes(R"({"a":{"dtype":"F32","shape":[1,"2"],"data_offsets":[0,8]}})", 8),
	               "shape[1] is a string, not a non-negative integer");
}

TEST_F(SafetensorsCorrupt, ShapeProductOverflows) {
	expect_corrupt(st_bytes(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4),
	               "overflows");
}

TEST_F(SafetensorsCorrupt, ShapeSizeDoesNotMatchSpan) {
	expect_corrupt(st_bytes(R"({"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 12),
	               "tensor 'a.weight': data_offsets [0, 12] span 12 bytes but shape [2, 2] of F32 needs 16");
}

TEST_F(SafetensorsCorrupt, EndBeforeBegin) {
	expect_corrupt(st_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4), "end before begin");
}

TEST_F(SafetensorsCorrupt, OverlappingOffsets) {
	expect_corrupt(st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
	                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
	                        12),
	               "overlap");
}

TEST_F(SafetensorsCorrupt, HoleBetweenTensors) {
	expect_corrupt(st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
	                        R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
	                        12),
	               "hole of 4 bytes");
}

TEST_F(SafetensorsCorrupt, DataRegionShorterThanLastOffset) {
	expect_corrupt(st_bytes("{" + kOk + "}", 12), "shorter than");
}

TEST_F(SafetensorsCorrupt, DataRegionLongerThanLastOffset) {
	expect_corrupt(st_bytes("{" + kOk + "}", 20), "longer than");
}

TEST_F(SafetensorsCorrupt, DuplicateTensorName) {
	expect_corrupt(st_bytes("{" + kOk + "," + kOk + "}", 16), "duplicate key 'a'");
}

TEST_F(SafetensorsCorrupt, DuplicateKeyInsideEntry) {
	expect_corrupt(st_bytes(R"({"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})", 4),
	               "duplicate key 'dtype'");
}

TEST_F(SafetensorsCorrupt, MetadataNonStringValue) {
	expect_corrupt(st_bytes(R"({"__metadata__":{"format":1}})", 0), "'__metadata__' entry 'format' is an integer");
}

TEST_F(SafetensorsCorrupt, HostileNameIsEscapedAndTruncated) {
	const std::string name = "evil\x1b[31m\nname" + std::string(500, 'x');
	const auto path = dir_.path() / "hostile.safetensors";
	write_file(path,
	           st_bytes("{" + nlohmann::json(name).dump() + R"(:{"dtype":"X","shape":[],"data_offsets":[0,0]}})", 0));
	const std::string msg = error_of([&] { SafetensorsFile file(path); });
	EXPECT_NE(msg.find("evil\\x1b[31m\\x0aname"), std::string::npos) << msg;
	EXPECT_NE(msg.find("..."), std::string::npos) << msg;
	EXPECT_LT(msg.size(), 400u) << msg;
	for (char c : msg)
		EXPECT_GE(static_cast<unsigned char>(c), 0x20);
}

TEST(SafetensorsEscape, KeepsUtf8AndEscapesDeceptiveText) {
	EXPECT_EQ(escape_for_message("caf\xc3\xa9"), "caf\xc3\xa9");
	EXPECT_EQ(escape_for_message("a\xe2\x80\xae"
	                             "b"),
	          "a\\xe2\\x80\\xaeb"); // right-to-left override
	EXPECT_EQ(escape_for_message("\xff\xc0\x80"), "\\xff\\xc0\\x80");
	EXPECT_EQ(escape_for_message("a\\b"), "a\\\\b");
	EXPECT_EQ(escape_for_message(std::string(100, 'y'), 10), std::string(10, 'y') + "...");
}

// --- valid-but-unusual files ---

TEST(SafetensorsParse, ZeroSizedTensorsAndMetadata) {
	const std::string header =
	    R"({"__metadata__":{"format":"pt"},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},)"
	    R"("s":{"dtype":"I64","shape":[],"data_offsets":[4,12]},)"
	    R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
	const std::string bytes = st_bytes(header + "   ", 12);
	const auto h = parse_safetensors({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, "mem");
	ASSERT_EQ(h.tensors.size(), 3u);
	EXPECT_EQ(h.tensors[0].name, "b");
	EXPECT_EQ(h.tensors[1].name, "e");
	EXPECT_EQ(h.tensors[2].name, "s");
	EXPECT_EQ(h.tensors[2].numel(), 1u);
	EXPECT_EQ(h.tensors[1].numel(), 0u);
	ASSERT_EQ(h.metadata.size(), 1u);
	EXPECT_EQ(h.metadata[0], (std::pair<std::string, std::string>{"format", "pt"}));
	EXPECT_EQ(h.data_offset, 8 + header.size() + 3);
}

// --- writer layout ---

std::vector<OutputTensorSpec> sample_specs() {
	return {
	    {"w.f32", DType::F32, {4, 4}},   // 64 bytes
	    {"w.bf16", DType::BF16, {3, 5}}, // 30 bytes
	    {"ids", DType::I64, {3}},        // 24 bytes
	    {"mask", DType::U8, {7}},        // 7 bytes
	    {"scalar", DType::F64, {}},      // 8 bytes
	    {"empty", DType::F16, {0, 4}},   // 0 bytes
	    {"w.f16", DType::F16, {2, 3}},   // 12 bytes
	};
}

TEST(SafetensorsLayout, SingleShardHeaderFormat) {
	const auto specs = sample_specs();
	const auto layout = plan_output_layout(specs, UINT64_MAX);
	ASSERT_EQ(layout.shards.size(), 1u);
	const auto& shard = layout.shards[0];
	EXPECT_EQ(shard.file_name, "model.safetensors");
	EXPECT_EQ(shard.header.size() % 8, 0u);
	EXPECT_EQ(layout.total_size, 64u + 30 + 24 + 7 + 8 + 0 + 12);
	EXPECT_EQ(shard.file_size, shard.header.size() + layout.total_size);
	const std::string json_text = shard.header.substr(8);
	EXPECT_TRUE(json_text.starts_with(R"({"__metadata__":{"format":"pt"},"w.f32":{"dtype":"F32","shape":[4,4],)"
	                                  R"("data_offsets":[0,64]},"w.bf16")"))
	    << json_text;
	EXPECT_EQ(json_text.find_last_not_of(' ') + 1, json_text.find_last_of('}') + 1);
	EXPECT_EQ(layout.file_offset[1], shard.header.size() + 64);
}

TEST(SafetensorsLayout, GreedyShardingAndOversizedTensor) {
	std::vector<OutputTensorSpec> specs = {
	    {"a", DType::F32, {10}},    // 40
	    {"b", DType::F32, {10}},    // 40 -> 80 fits in 100
	    {"c", DType::F32, {10}},    // 40 -> 120 > 100: new shard
	    {"big", DType::F32, {100}}, // 400 > 100 alone
	    {"d", DType::F32, {5}},     // 20: new shard after big
	};
	const auto layout = plan_output_layout(specs, 100);
	ASSERT_EQ(layout.shards.size(), 4u);
	EXPECT_EQ(layout.shards[0].tensors, (std::vector<size_t>{0, 1}));
	EXPECT_EQ(layout.shards[1].tensors, (std::vector<size_t>{2}));
	EXPECT_EQ(layout.shards[2].tensors, (std::vector<size_t>{3}));
	EXPECT_EQ(layout.shards[3].tensors, (std::vector<size_t>{4}));
	EXPECT_EQ(layout.shards[0].file_name, "model-00001-of-00004.safetensors");
	EXPECT_EQ(layout.shards[3].file_name, "model-00004-of-00004.safetensors");
	EXPECT_EQ(layout.shard_of, (std::vector<size_t>{0, 0, 1, 2, 3}));
	EXPECT_EQ(layout.total_size, 540u);
}

TEST(SafetensorsLayout, DuplicateOutputNameIsAnError) {
	std::vector<OutputTensorSpec> specs = {{"a", DType::F32, {1}}, {"a", DType::F32, {1}}};
	EXPECT_THROW(plan_output_layout(specs, UINT64_MAX), Error);
}

// --- writer ---

TEST(SafetensorsWrite, RejectsWrongSizeDoubleWriteAndMissingTensor) {
	TempDir dir;
	SafetensorsWriter w(dir.path(), {{"a", DType::F32, {2}}, {"b", DType::U8, {3}}}, UINT64_MAX);
	EXPECT_NE(error_of([&] { w.write(0, pattern(7, 1)); }).find("got 7 bytes"), std::string::npos);
	w.write(0, pattern(8, 1));
	EXPECT_NE(error_of([&] { w.write(0, pattern(8, 1)); }).find("written twice"), std::string::npos);
	EXPECT_NE(error_of([&] { w.write(2, pattern(8, 1)); }).find("only 2 are planned"), std::string::npos);
	EXPECT_NE(error_of([&] { w.finish(); }).find("never written (first: 'b')"), std::string::npos);
	w.write(1, pattern(3, 2));
	w.finish();
	EXPECT_FALSE(fs::exists(dir.path() / "model.safetensors.index.json"));
	SafetensorsFile file(dir.path() / "model.safetensors");
	EXPECT_EQ(file.tensors().size(), 2u);
}

// Writes sample_specs() with pattern data, from several threads, in reverse order.
void write_samples(const fs::path& dir, uint64_t max_shard_bytes) {
	const auto specs = sample_specs();
	SafetensorsWriter w(dir, specs, max_shard_bytes);
	std::vector<std::thread> threads;
	for (size_t i = specs.size(); i-- > 0;)
		threads.emplace_back([&w, &specs, i] { w.write(i, pattern(specs[i].nbytes(), static_cast<uint8_t>(i))); });
	for (auto& t : threads)
		t.join();
	w.finish();
}

void expect_samples_read_back(const fs::path& dir) {
	const auto specs = sample_specs();
	ModelFolder model(dir);
	ASSERT_EQ(model.tensors().size(), specs.size());
	for (size_t i = 0; i < specs.size(); ++i) {
		const auto* t = model.find(specs[i].name);
		ASSERT_NE(t, nullptr) << specs[i].name;
		EXPECT_EQ(t->info->dtype, specs[i].dtype);
		EXPECT_EQ(t->info->shape, specs[i].shape);
		const auto data = t->file->data(*t->info);
		const auto want = pattern(specs[i].nbytes(), static_cast<uint8_t>(i));
		EXPECT_TRUE(std::equal(data.begin(), data.end(), want.begin(), want.end())) << specs[i].name;
	}
}

TEST(SafetensorsRoundTrip, Unsharded) {
	TempDir dir;
	write_samples(dir.path(), UINT64_MAX);
	EXPECT_TRUE(fs::exists(dir.path() / "model.safetensors"));
	EXPECT_FALSE(fs::exists(dir.path() / "model.safetensors.index.json"));
	expect_samples_read_back(dir.path());
	EXPECT_FALSE(ModelFolder(dir.path()).sharded());
}

TEST(SafetensorsRoundTrip, ShardedWithIndex) {
	TempDir dir;
	write_samples(dir.path(), 40);
	const auto layout = plan_output_layout(sample_specs(), 40);
	const size_t n = layout.shards.size();
	ASSERT_GT(n, 2u);
	for (size_t k = 1; k <= n; ++k) {
		char name[64];
		std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k, n);
		EXPECT_TRUE(fs::exists(dir.path() / name)) << name;
	}
	const auto index = nlohmann::json::parse(read_file(dir.path() / "model.safetensors.index.json"));
	EXPECT_EQ(index["metadata"]["total_size"], layout.total_size);
	EXPECT_EQ(index["weight_map"].size(), sample_specs().size());
	EXPECT_EQ(index["weight_map"]["w.f32"], layout.shards[0].file_name);
	EXPECT_EQ(index["weight_map"]["w.f16"], layout.shards[n - 1].file_name);
	expect_samples_read_back(dir.path());
	EXPECT_TRUE(ModelFolder(dir.path()).sharded());
}

TEST(SafetensorsRoundTrip, BytesDoNotDependOnWriteOrder) {
	TempDir a, b;
	write_samples(a.path(), UINT64_MAX);
	const auto specs = sample_specs();
	SafetensorsWriter w(b.path(), specs, UINT64_MAX);
	for (size_t i = 0; i < specs.size(); ++i)
		w.write(i, pattern(specs[i].nbytes(), static_cast<uint8_t>(i)));
	w.finish();
	EXPECT_EQ(read_file(a.path() / "model.safetensors"), read_file(b.path() / "model.safetensors"));
}

// --- shard index ---

TEST(SafetensorsIndex, ParsesWeightMap) {
	const auto index = parse_shard_index(
	    R"({"metadata":{"total_size":8},"weight_map":{"a":"s1.safetensors","b":"./s2.safetensors","c":"s1.safetensors"}})",
	    "idx.json");
	ASSERT_EQ(index.weight_map.size(), 3u);
	EXPECT_EQ(index.shard_files, (std::vector<std::string>{"s1.safetensors", "s2.safetensors"}));
}

void expect_index_error(const std::string& text, const std::string& phrase) {
	const std::string msg = error_of([&] { parse_shard_index(text, "some/model.safetensors.index.json"); });
	EXPECT_NE(msg.find("some/model.safetensors.index.json: "), std::string::npos) << msg;
	EXPECT_NE(msg.find(phrase), std::string::npos) << "wanted '" << phrase << "' in: " << msg;
}

TEST(SafetensorsIndex, RejectsBadShardNames) {
	expect_index_error(R"({"weight_map":{"a":"../x.safetensors"}})", "leaves the model folder");
	expect_index_error(R"({"weight_map":{"a":"sub/../../x.safetensors"}})", "leaves the model folder");
	expect_index_error(R"({"weight_map":{"a":"/abs.safetensors"}})", "absolute path");
	expect_index_error(R"({"weight_map":{"a":"x\\y.safetensors"}})", "backslash");
	expect_index_error(R"({"weight_map":{"a":""}})", "is empty");
}

TEST(SafetensorsIndex, RejectsMalformedIndexes) {
	expect_index_error("[1]", "not an object");
	expect_index_error("{", "invalid JSON");
	expect_index_error(R"({"metadata":{}})", "missing 'weight_map'");
	expect_index_error(R"({"weight_map":[]})", "'weight_map' is an array");
	expect_index_error(R"({"weight_map":{"a":3}})", "weight_map entry 'a' is an integer, not a string");
	expect_index_error(R"({"weight_map":{"a":"s.safetensors","a":"t.safetensors"}})", "duplicate key 'a'");
}

} // namespace
} // namespace weld
