// A real client of weld's GGUF files: llama.cpp, through npm's node-llama-cpp 3.21.1
// (tests/clients, installed by scripts/install-clients). It loads a tiny Llama that weld wrote
// as GGUF, evaluates a fixed token sequence, and its next-token log-probabilities must match
// those of weld's runtime (src/nn/llama.h) on the Hugging Face folder: within 1e-3 in f32, and
// more loosely in f16 and q8_0. Log-probabilities are logits less their log-sum-exp, which is
// what node-llama-cpp exposes (the softmax of the greedy sampler's full candidate list).
#include "gguf_test_util.h"
#include "nn/llama.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

namespace weld {
namespace {

namespace fs = std::filesystem;

const std::vector<int64_t> kTokens = {test::kBosId, 72, 101, 108, 256, 257, 258, 32, 119, 111, 114, 100, 33, 10, 5};

fs::path clients_dir() {
	return fs::path(WELD_SOURCE_DIR) / "tests" / "clients";
}

bool have_node_llama_cpp() {
	return std::system("command -v node >/dev/null 2>&1") == 0 &&
	       fs::exists(clients_dir() / "node_modules" / "node-llama-cpp" / "package.json");
}

// llama.cpp's log-probabilities: [position][token].
std::vector<std::vector<double>> llama_cpp_logprobs(const fs::path& gguf) {
	const std::string command = "cd '" + clients_dir().string() + "' && node gguf_logits.mjs '" + gguf.string() +
	                            "' '" + nlohmann::json(kTokens).dump() + "' 2>&1";
	const std::string out = test::command_output(command, "node-llama-cpp failed");
	const auto rows = nlohmann::json::parse(out.substr(out.find('[')));
	std::vector<std::vector<double>> result;
	for (const auto& row : rows) {
		std::vector<double> values(test::kGgufVocab, -INFINITY);
		for (const auto& [token, logprob] : row.items())
			values.at(std::stoul(token)) = logprob.get<double>();
		result.push_back(values);
	}
	return result;
}

std::vector<std::vector<double>> weld_logprobs(const fs::path& dir) {
	const auto model = nn::LlamaModel::load(dir);
	const auto ids = at::tensor(at::ArrayRef<int64_t>(kTokens), at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
	const auto logprobs = at::log_softmax(model.forward(ids).to(at::kDouble)[0], -1).contiguous();
	const auto a = logprobs.accessor<double, 2>();
	std::vector<std::vector<double>> result(kTokens.size(), std::vector<double>(test::kGgufVocab));
	for (size_t t = 0; t < kTokens.size(); t++)
		for (int v = 0; v < test::kGgufVocab; v++)
			result[t][v] = a[static_cast<int64_t>(t)][v];
	return result;
}

struct Difference {
	double worst = 0, spread = 0; // largest |llama.cpp - weld|; range of weld's log-probabilities
};

Difference compare(const std::vector<std::vector<double>>& client, const std::vector<std::vector<double>>& weld) {
	Difference d;
	EXPECT_EQ(client.size(), weld.size());
	for (size_t t = 0; t < std::min(client.size(), weld.size()); t++) {
		const auto [lo, hi] = std::minmax_element(weld[t].begin(), weld[t].end());
		d.spread = std::max(d.spread, *hi - *lo);
		for (int v = 0; v < test::kGgufVocab; v++)
			d.worst = std::max(d.worst, std::abs(client[t][v] - weld[t][v]));
	}
	return d;
}

TEST(GgufClient, LlamaCppMatchesWeldsForwardPass) {
	if (!have_node_llama_cpp())
		GTEST_SKIP() << "node or tests/clients/node_modules/node-llama-cpp is missing (run scripts/install-clients)";
	test::TempDir tmp;
	test::write_gguf_ready_model(tmp / "hf");
	const auto expected = weld_logprobs(tmp / "hf");
	for (const auto& [type, tolerance] : {std::pair{"f32", 1e-3}, std::pair{"f16", 2e-2}, std::pair{"q8_0", 0.5}}) {
		const auto gguf = tmp / (std::string("m-") + type + ".gguf");
		std::string err;
		ASSERT_EQ(test::run_weld("convert '" + (tmp / "hf").string() + "' '" + gguf.string() + "' --gguf-type " + type +
		                             " -q",
		                         &err),
		          0)
		    << err;
		const auto d = compare(llama_cpp_logprobs(gguf), expected);
		EXPECT_LT(d.worst, tolerance) << type;
		EXPECT_GT(d.spread, 1.0) << "the model's predictions are too flat for the comparison to mean anything";
		std::printf("llama.cpp vs weld, %s: largest log-probability difference %.2e (spread %.1f)\n", type, d.worst,
		            d.spread);
	}
}

} // namespace
} // namespace weld
