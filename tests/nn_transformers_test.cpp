// weld's forward pass against Hugging Face transformers' own classes: the logits that
// LlamaForCausalLM / Qwen2ForCausalLM computed (tests/transformers_logits.py, run once where
// torch and transformers are installed) for weld-written model folders, recorded in
// tests/data/transformers/*-logits.json. The models are weld's: saved by weld train.
#include "nn/llama.h"
#include "nn_test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

namespace weld {
namespace {

namespace fs = std::filesystem;

// A recording's model folder, beside it.
fs::path model_folder(const std::string& name) {
	const auto dir = fs::path(WELD_SOURCE_DIR) / "tests/data/transformers" / name;
	return fs::exists(dir / "config.json") ? dir : fs::path();
}

TEST(Transformers, LogitsOfWeldWrittenModelsMatch) {
	const fs::path dir = fs::path(WELD_SOURCE_DIR) / "tests/data/transformers";
	int checked = 0;
	for (const auto& entry : fs::directory_iterator(dir)) {
		if (!entry.path().string().ends_with("-logits.json")) continue;
		const auto record = nlohmann::json::parse(test::read_file(entry.path()));
		const auto folder = model_folder(record["model"]);
		ASSERT_FALSE(folder.empty()) << entry.path() << ": no model folder " << record["model"];
		const auto model = nn::LlamaModel::load(folder);
		const at::NoGradGuard no_grad;
		double worst = 0;
		for (size_t s = 0; s < record["sequences"].size(); ++s) {
			const auto ids = record["sequences"][s].get<std::vector<int64_t>>();
			const auto logits =
			    model.forward(at::tensor(at::ArrayRef<int64_t>(ids), at::kLong)).to(at::kDouble)[0].contiguous();
			const auto got = logits.accessor<double, 2>();
			const auto& expected = record["logits"][s];
			ASSERT_EQ(static_cast<size_t>(logits.size(0)), expected.size());
			for (int64_t t = 0; t < logits.size(0); ++t)
				for (int64_t v = 0; v < logits.size(1); ++v)
					worst = std::max(worst, std::abs(got[t][v] - expected[t][v].get<double>()));
		}
		std::printf("%s (%s, transformers %s): max |weld - transformers| = %.3g\n",
		            record["model"].get<std::string>().c_str(), record["class"].get<std::string>().c_str(),
		            record["transformers"].get<std::string>().c_str(), worst);
		EXPECT_LE(worst, 1e-4) << record["model"];
		++checked;
	}
	EXPECT_GE(checked, 2) << "recordings missing from " << dir;
}

} // namespace
} // namespace weld
