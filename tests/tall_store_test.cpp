// TALL-mask compression: fine-tunes stored as tau_MTL + bit masks, experts reconstructed.
#include "exec/tall_store.h"
#include "test_util.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <cmath>

namespace weld {
namespace {

namespace fs = std::filesystem;

class TallStoreTest : public ::testing::TestWithParam<DType> {
protected:
	void SetUp() override {
		spec_.dtype = GetParam();
		const auto base = make_tiny_llama(spec_, 3);
		write_tiny_llama(dir_ / "base", spec_, base);
		base_ = test::stored_values(base, spec_.dtype);
		// Localized task vectors, as fine-tuning tends to give: task t mostly moves every third weight.
		for (int t = 0; t < 3; t++) {
			auto expert = perturb(base, 0.05f, 20 + t);
			for (size_t i = 0; i < expert.size(); i++)
				for (size_t j = 0; j < expert[i].values.size(); j++)
					if (j % 3 != static_cast<size_t>(t))
						expert[i].values[j] = base[i].values[j] + 0.02f * (expert[i].values[j] - base[i].values[j]);
			write_tiny_llama(dir_ / ("t" + std::to_string(t)), spec_, expert, 6000);
			experts_.push_back(test::stored_values(expert, spec_.dtype));
		}
	}

	TallCompressSummary compress(double lambda = 0.4) {
		TallCompressOptions options;
		options.base = (dir_ / "base").string();
		for (int t = 0; t < 3; t++)
			options.tasks.push_back((dir_ / ("t" + std::to_string(t))).string());
		options.tall_lambda = lambda;
		options.out = dir_ / "store";
		return tall_compress(options);
	}

	test::Tensors extract(const std::string& task) {
		TallExtractOptions options;
		options.store = dir_ / "store";
		options.task = task;
		options.out = dir_ / "expert";
		options.force = true;
		tall_extract(options);
		return test::read_model(dir_ / "expert");
	}

	test::TempDir dir_;
	TinyLlamaSpec spec_;
	test::Tensors base_;
	std::vector<test::Tensors> experts_;
};

// The definition: theta_0 + m_t (.) tau_MTL with m_t = |tau_t| > lambda |tau_MTL - tau_t|.
TEST_P(TallStoreTest, ReconstructsEachExpertFromTheMultiTaskVectorAndItsMask) {
	const auto summary = compress(0.4);
	EXPECT_EQ(summary.kept_fraction.size(), 3u);
	const bool exact = GetParam() == DType::F32;
	for (size_t t = 0; t < 3; t++) {
		const auto out = extract(t == 1 ? (dir_ / "t1").string() : std::to_string(t));
		double err_recon = 0, err_base = 0;
		for (const auto& [name, base] : base_) {
			const auto& got = out.at(name);
			for (size_t j = 0; j < base.size(); j++) {
				double mtl = 0;
				for (const auto& e : experts_)
					mtl += static_cast<double>(e.at(name)[j]) - base[j];
				const double tau = static_cast<double>(experts_[t].at(name)[j]) - base[j];
				const bool keep = std::abs(tau) > 0.4 * std::abs(mtl - tau);
				const double expected = base[j] + (keep ? mtl : 0.0);
				if (exact) {
					ASSERT_NEAR(got[j], expected, 1e-5 * (1 + std::abs(expected))) << name << "[" << j << "]";
				}
				const double expert = experts_[t].at(name)[j];
				err_recon += (got[j] - expert) * (got[j] - expert);
				err_base += (base[j] - expert) * (base[j] - expert);
			}
		}
		// The point of the masks: the reconstruction is much closer to the expert than the base is.
		EXPECT_LT(err_recon, 0.2 * err_base) << "task " << t;
	}
}

TEST_P(TallStoreTest, StoresOneBitPerWeightAndTask) {
	const auto summary = compress();
	uint64_t weights = 0;
	for (const auto& [name, values] : base_)
		weights += values.size();
	uint64_t mask_bytes = 0;
	for (const auto& [name, values] : base_)
		mask_bytes += 3 * ((values.size() + 7) / 8);
	EXPECT_EQ(summary.store_bytes, weights * dtype_size(GetParam()) + mask_bytes);
	EXPECT_LT(summary.store_bytes, summary.expert_bytes / 2);
}

TEST_P(TallStoreTest, UnknownTaskAndBadStoreAreErrors) {
	compress();
	EXPECT_THROW(extract("7"), Error);
	EXPECT_FALSE(fs::exists(dir_ / "expert"));
	TallExtractOptions options;
	options.store = dir_ / "base"; // a model folder, not a store
	options.task = "0";
	options.out = dir_ / "expert";
	EXPECT_THROW(tall_extract(options), Error);
	EXPECT_THROW(compress(), Error) << "existing store without --force";
}

TEST_P(TallStoreTest, ShapeMismatchLeavesNoStore) {
	auto wide = spec_;
	wide.intermediate *= 2;
	fs::remove_all(dir_ / "t2");
	write_tiny_llama(dir_ / "t2", wide, make_tiny_llama(wide, 5));
	EXPECT_THROW(compress(), Error);
	EXPECT_FALSE(fs::exists(dir_ / "store"));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, TallStoreTest, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& param_info) { return std::string(dtype_safetensors_name(param_info.param)); });

} // namespace
} // namespace weld
