// Streaming forms of nuslerp, multislerp, karcher, varm, mwa, ram, ramplus_tl and cabs against their
// whole-tensor references (streaming_fixture.h): with the base model and, for methods that may
// go without one, without it.
#include "streaming_fixture.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace weld {
namespace {

class StreamingSphereTest : public StreamingMethodsTest {
protected:
	// merge_against_reference for a recipe without base_model: ft1..ftN (model_params[i] for ft i+1)
	// merged at --threads 1 and 2, against merge_whole on those N sources alone.
	double merge_without_base(const std::string& method, const std::string& global_params,
	                          const std::vector<std::string>& model_params) {
		std::string models;
		for (size_t i = 0; i < model_params.size(); ++i)
			models += "  - model: " + (dir_ / ("ft" + std::to_string(i + 1))).string() + "\n    parameters: {" +
			          model_params[i] + "}\n";
		const std::string recipe =
		    "merge_method: " + method + "\nparameters: {" + global_params + "}\nmodels:\n" + models;
		const auto merged = merge_recipe(recipe, 2, false);
		const std::string two = last_bytes_;
		merge_recipe(recipe, 1, false);
		EXPECT_EQ(last_bytes_, two) << method << ": thread count changed the output";

		const auto* reference = dynamic_cast<const WholeTensorReference*>(find_method(method));
		if (!reference) {
			ADD_FAILURE() << method << " keeps no whole-tensor reference";
			return 1e30;
		}
		std::vector<test::Tensors> sources;
		for (size_t i = 0; i < model_params.size(); ++i)
			sources.push_back(inputs("ft" + std::to_string(i + 1)));
		double worst = 0;
		const ModelFolder base_model(dir_ / "base"); // for the tensor names and shapes
		for (const auto& t : base_model.tensors()) {
			const std::string& name = t.info->name;
			MergeInput input;
			input.tensor_name = name;
			input.shape = t.info->shape;
			input.params = parse_params(global_params);
			input.random_seed = 5;
			for (size_t i = 0; i < sources.size(); ++i) {
				input.sources.emplace_back(sources[i].at(name));
				input.source_params.push_back(parse_params(model_params[i]));
			}
			std::vector<float> expected(input.sources[0].size());
			reference->merge_whole(input, expected);
			const auto& got = merged.at(name);
			EXPECT_EQ(got.size(), expected.size()) << name;
			for (size_t j = 0; j < expected.size() && j < got.size(); ++j)
				worst = std::max(worst, static_cast<double>(std::fabs(got[j] - expected[j])));
		}
		return worst;
	}
};

// method's BlockMerge run with its blocks in reverse order on three alternating workers.
std::vector<float> streamed_out_of_order(const MergeMethod& method, const MergeInput& input) {
	const uint64_t n = input.sources[0].size(), blocks = block_count(n);
	auto kernel = method.block_merge(input, input.sources.size(), n, 3);
	std::vector<std::span<const float>> views(input.sources.size());
	auto block_at = [&](uint64_t b) {
		const uint64_t offset = b * kBlockElements, size = std::min(kBlockElements, n - offset);
		for (size_t s = 0; s < views.size(); ++s)
			views[s] = input.sources[s].subspan(offset, size);
		return Block{.index = b, .offset = offset, .sources = views};
	};
	for (int pass = 0; pass < kernel->stat_passes(); ++pass) {
		if (!kernel->wants_pass(pass)) continue;
		for (uint64_t b = blocks; b-- > 0;)
			kernel->observe(pass, block_at(b), static_cast<unsigned>(b % 3));
		kernel->end_pass(pass);
	}
	std::vector<float> out(n);
	for (uint64_t b = blocks; b-- > 0;) {
		const Block block = block_at(b);
		kernel->merge(block, std::span<float>(out).subspan(block.offset, block.size()), static_cast<unsigned>(b % 3));
	}
	return out;
}

// The fixture's --threads 2 streams on one thread under its one-byte budget; here the blocks come
// in another order on several workers, which must give the bytes of merge() (in order, one worker).
TEST(StreamingSphereOrder, AnyBlockOrderGivesTheSameBytes) {
	const uint64_t rows = 70, columns = 777; // 54390 elements: four blocks, rows and units across them
	std::mt19937 rng(3);
	std::normal_distribution<float> value(0, 0.02f);
	std::vector<std::vector<float>> data(4, std::vector<float>(rows * columns));
	for (auto& source : data)
		for (float& v : source)
			v = value(rng);
	// models of data[0..2], then data[3] as the base.
	const auto check = [&](const char* method, ParamValues params, ParamValues per_source, size_t models = 3) {
		MergeInput input;
		input.tensor_name = "t";
		input.shape = {rows, columns};
		input.base_index = static_cast<int>(models);
		input.params = std::move(params);
		for (size_t s = 0; s <= models; ++s) {
			input.sources.emplace_back(data[s == models ? 3 : s]);
			input.source_params.push_back(per_source);
		}
		std::vector<float> in_order(rows * columns);
		find_method(method)->merge(input, in_order);
		EXPECT_EQ(streamed_out_of_order(*find_method(method), input), in_order) << method;
	};
	check("nuslerp", {{"nuslerp_flatten", 0}, {"nuslerp_row_wise", 1}}, {{"weight", 1}}, 2);
	check("nuslerp", {{"nuslerp_flatten", 0}}, {{"weight", 1}}, 2);
	check("nuslerp", {}, {{"weight", 1}}, 2);
	check("multislerp", {}, {{"weight", 1}});
	check("karcher", {}, {});
	check("varm", {}, {});
	check("ramplus_tl", {{"epsilon", 0.01}}, {});
	check("cabs", {{"default_n_val", 2}, {"default_m_val", 6}}, {{"weight", 1}});
}

// Sums over vectors are added per piece or per block (or exactly) here, in one go there, and the
// spherical steps run on coefficients: double rounding, below a float ulp of the weights (~1e-9
// seen), and rounding norm-weight outputs near 1 the other way would still be 1.2e-7 at most.
constexpr double kRounding = 1e-7;

// Rows of 1000 elements: those inside one block are summed in the same order (same bytes), those
// that cross a block boundary in two pieces.
TEST_F(StreamingSphereTest, NuSlerpRows) {
	EXPECT_LT(merge_against_reference("nuslerp", "nuslerp_flatten: false", "", true, 2), kRounding);
	EXPECT_LT(merge_without_base("nuslerp", "nuslerp_flatten: false", {"weight: 1", "weight: 3"}), kRounding);
}

// The whole tensor as one vector: per-block sums.
TEST_F(StreamingSphereTest, NuSlerpFlatten) {
	EXPECT_LT(merge_against_reference("nuslerp", "", "", true, 2), kRounding);
	EXPECT_LT(merge_without_base("nuslerp", "nuslerp_flatten: true", {"weight: 1", "weight: 3"}), kRounding);
}

// Columns: exact fixed-point sums there, sequential double sums in the reference.
TEST_F(StreamingSphereTest, NuSlerpColumns) {
	EXPECT_LT(merge_against_reference("nuslerp", "nuslerp_flatten: false, nuslerp_row_wise: true", "", true, 2),
	          kRounding);
	EXPECT_LT(
	    merge_without_base("nuslerp", "nuslerp_flatten: false, nuslerp_row_wise: true", {"weight: 2", "weight: 1"}),
	    kRounding);
}

// The Gram matrix is summed per block; the steps run on coefficients instead of elements.
TEST_F(StreamingSphereTest, MultiSlerp) {
	EXPECT_LT(merge_against_reference("multislerp", "", ""), kRounding);
	EXPECT_LT(merge_against_reference("multislerp", "normalize_weights: false", "", true, 2), kRounding);
	EXPECT_LT(merge_without_base("multislerp", "", {"weight: 1", "weight: 2", "weight: 0.5"}), kRounding);
}

// With the base as a fourth source; ten steps, none, and a tolerance that stops them early.
TEST_F(StreamingSphereTest, Karcher) {
	EXPECT_LT(merge_against_reference("karcher", "", "", false, 3), kRounding);
	EXPECT_LT(merge_against_reference("karcher", "max_iter: 0", "", false, 2), kRounding);
	EXPECT_LT(merge_without_base("karcher", "tol: 0.001, max_iter: 50", {"", ""}), kRounding);
}

// Squared changes summed per block: the weights differ by rounding only.
TEST_F(StreamingSphereTest, Varm) {
	EXPECT_LT(merge_against_reference("varm", "", "", false, 3), kRounding);
}

// Weights from parameters: the same operations, the same bytes.
TEST_F(StreamingSphereTest, Mwa) {
	EXPECT_EQ(merge_without_base("mwa", "penalty: 2", {"loss: 1.5", "loss: 0.5", "loss: 1"}), 0.0);
	EXPECT_EQ(merge_without_base("mwa", "", {"step: 100", "step: 300"}), 0.0);
}

// Per element, and RAM+'s counts are integers: the same bytes. The larger epsilon leaves a mix
// of unchanged, unique and shared changes.
TEST_F(StreamingSphereTest, Ram) {
	EXPECT_EQ(merge_against_reference("ram", "", "", false, 3), 0.0);
	EXPECT_EQ(merge_against_reference("ram", "epsilon: 0.01", "", false, 2), 0.0);
	EXPECT_EQ(merge_against_reference("ramplus_tl", "", "", false, 2), 0.0);
	EXPECT_EQ(merge_against_reference("ramplus_tl", "epsilon: 0.01, r: 0.5, alpha: 1", "", false, 3), 0.0);
}

// Units of lcm(m) elements merged by the same code: the same bytes. Units inside blocks (1:4),
// and too long to stream (m 2000: the whole-tensor form).
TEST_F(StreamingSphereTest, CabsUnitsInsideBlocks) {
	EXPECT_EQ(merge_against_reference("cabs", "", "", true, 2), 0.0);
	EXPECT_EQ(merge_against_reference("cabs", "default_n_val: 500, default_m_val: 2000", "", true, 2), 0.0);
}

// Units crossing block boundaries (2:6, 3:5), gathered in the statistics pass.
TEST_F(StreamingSphereTest, CabsUnitsAcrossBlocks) {
	EXPECT_EQ(merge_against_reference("cabs", "default_n_val: 2, default_m_val: 6", "", true, 3), 0.0);
	EXPECT_EQ(merge_against_reference("cabs", "", "n_val: 3, m_val: 5", true, 2), 0.0);
}

} // namespace
} // namespace weld
