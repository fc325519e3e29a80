// Merges that read statistics (fisher, regmean): statistics folders written here by hand with
// known values, merged end to end, and the results checked against the methods' definitions:
// Fisher's weighted average element by element, RegMean's normal equations
// Σ_i (W* - W_i) G̃_i = 0 (whatever path the solver took) and its alpha = 0 closed form. Then
// every way a statistics folder can fail to fit the recipe.
#include "family_fixture.h"
#include "io/safetensors.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace weld {
namespace {

namespace fs = std::filesystem;
using test::Tensors;

struct Stat {
	std::string name;
	std::vector<uint64_t> shape;
	std::vector<float> values;
};

void write_stats(const fs::path& dir, const std::string& kind, const std::vector<Stat>& stats) {
	fs::create_directories(dir);
	std::vector<OutputTensorSpec> specs;
	for (const auto& s : stats)
		specs.push_back({s.name, DType::F32, s.shape});
	SafetensorsWriter writer(dir, specs, UINT64_MAX, {}, {{"weld_stats", kind}});
	for (size_t i = 0; i < stats.size(); ++i)
		writer.write(i, {reinterpret_cast<const uint8_t*>(stats[i].values.data()), stats[i].values.size() * 4});
	writer.finish();
}

// Deterministic values in [0, 1).
float draw(uint64_t& state) {
	state = state * 6364136223846793005ull + 1442695040888963407ull;
	return static_cast<float>((state >> 40) & 0xFFFFFF) / static_cast<float>(1 << 24);
}

// A symmetric positive semi-definite n x n matrix AᵀA / m from a random m x n A.
std::vector<float> random_gram(size_t n, size_t m, uint64_t seed) {
	std::vector<double> a(m * n);
	for (auto& v : a)
		v = draw(seed) - 0.5;
	std::vector<float> g(n * n);
	for (size_t r = 0; r < n; ++r)
		for (size_t c = 0; c < n; ++c) {
			double sum = 0;
			for (size_t k = 0; k < m; ++k)
				sum += a[k * n + r] * a[k * n + c];
			g[r * n + c] = static_cast<float>(sum / static_cast<double>(m));
		}
	return g;
}

class DataMethodsTest : public ::testing::Test, protected test::Family {
protected:
	void SetUp() override { make_family(DType::F32, 1, 2); }

	std::vector<uint64_t> shape_of(const std::string& name) {
		return SafetensorsFile(dir_ / "base" / "model.safetensors").find(name)->shape;
	}
	// Fisher of every tensor of a model: positive values drawn from seed.
	void write_fisher(const std::string& folder, const Tensors& model, uint64_t seed) {
		std::vector<Stat> stats;
		for (const auto& [name, values] : model) {
			Stat s{name, shape_of(name), std::vector<float>(values.size())};
			for (auto& v : s.values)
				v = draw(seed) * 2;
			stats.push_back(std::move(s));
		}
		write_stats(dir_ / folder, "fisher", stats);
	}
	// Gram matrices of every 2-D projection (not the embedding or lm_head, as a sparse file may).
	std::vector<Stat> grams(uint64_t seed, size_t samples) {
		std::vector<Stat> stats;
		for (const auto& [name, values] : base_) {
			const auto shape = shape_of(name);
			if (shape.size() != 2 || name.find("proj") == std::string::npos) continue;
			stats.push_back({name, {shape[1], shape[1]}, random_gram(shape[1], samples, seed++)});
		}
		return stats;
	}
	std::string recipe(const std::string& method, const std::string& extra = "", const std::string& stats_a = "sa",
	                   const std::string& stats_b = "sb") {
		return "merge_method: " + method + "\n" + extra + "models:\n  - model: a\n    parameters: {stats: " + stats_a +
		       "}\n  - model: b\n    parameters: {stats: " + stats_b + "}\n";
	}
};

TEST_F(DataMethodsTest, FisherIsTheFisherWeightedAverage) {
	write_fisher("sa", a_, 1);
	write_fisher("sb", b_, 2);
	const auto out = merged("merge_method: fisher\nparameters: {fisher_floor: 0.01}\nmodels:\n"
	                        "  - model: a\n    parameters: {stats: sa, weight: 2}\n"
	                        "  - model: b\n    parameters: {stats: sb}\n");
	const auto fa = test::read_model(dir_ / "sa"), fb = test::read_model(dir_ / "sb");
	for (const auto& [name, base] : base_)
		for (size_t i = 0; i < base.size(); i += 5) {
			const double wa = 2 * (fa.at(name)[i] + 0.01);
			const double wb = fb.at(name)[i] + 0.01;
			expect_near(out, name, i, (wa * a_[name][i] + wb * b_[name][i]) / (wa + wb));
		}
}

TEST_F(DataMethodsTest, RegMeanSolvesTheNormalEquations) {
	const auto ga = grams(10, 40), gb = grams(20, 40);
	write_stats(dir_ / "sa", "gram", ga);
	write_stats(dir_ / "sb", "gram", gb);
	const double alpha = 0.7;
	const auto out = merged(recipe("regmean", "parameters: {alpha: 0.7}\n"));
	for (size_t k = 0; k < ga.size(); ++k) {
		const auto& name = ga[k].name;
		const size_t rows = shape_of(name)[0], cols = ga[k].shape[0];
		auto g = [&](const std::vector<float>& m, size_t r, size_t c) {
			return m[r * cols + c] * (r == c ? 1 : alpha);
		};
		// Σ_i (W* - W_i) G̃_i, relative to Σ_i |W_i| |G̃_i|: zero up to float32 rounding.
		double worst = 0;
		for (size_t r = 0; r < rows; ++r)
			for (size_t c = 0; c < cols; ++c) {
				double residual = 0, scale = 0;
				for (size_t j = 0; j < cols; ++j) {
					const double w = out.at(name)[r * cols + j];
					for (const auto& [model, gram] : {std::pair{&a_, &ga[k].values}, std::pair{&b_, &gb[k].values}}) {
						const double wi = (*model)[name][r * cols + j];
						residual += (w - wi) * g(*gram, j, c);
						scale += std::abs(wi * g(*gram, j, c));
					}
				}
				worst = std::max(worst, std::abs(residual) / scale);
			}
		EXPECT_LT(worst, 1e-4) << name;
	}
	// Tensors without Gram matrices: the plain average.
	for (const auto& name : {"model.norm.weight", "model.embed_tokens.weight", "lm_head.weight"})
		for (size_t i = 0; i < base_[name].size(); i += 7)
			expect_near(out, name, i, (a_[name][i] + b_[name][i]) / 2.0);
}

TEST_F(DataMethodsTest, RegMeanAtAlphaZeroIsAPerFeatureWeightedAverage) {
	const auto ga = grams(30, 8), gb = grams(40, 8);
	write_stats(dir_ / "sa", "gram", ga);
	write_stats(dir_ / "sb", "gram", gb);
	const auto out = merged(recipe("regmean", "parameters: {alpha: 0}\n"));
	for (size_t k = 0; k < ga.size(); ++k) {
		const auto& name = ga[k].name;
		const size_t cols = ga[k].shape[0];
		for (size_t i = 0; i < base_[name].size(); i += 3) {
			const size_t c = i % cols;
			const double da = ga[k].values[c * cols + c], db = gb[k].values[c * cols + c];
			expect_near(out, name, i, (da * a_[name][i] + db * b_[name][i]) / (da + db));
		}
	}
}

// Second moments written as `weld train --save-optimizer` marks them.
TEST_F(DataMethodsTest, OtaIsThePrecisionWeightedAverage) {
	auto second_moments = [&](const std::string& folder, const Tensors& model, uint64_t seed) {
		std::vector<Stat> stats;
		for (const auto& [name, values] : model) {
			Stat st{name, shape_of(name), std::vector<float>(values.size())};
			for (auto& v : st.values)
				v = draw(seed) * draw(seed) * 1e-3f;
			stats.push_back(std::move(st));
		}
		write_stats(dir_ / folder, "exp_avg_sq", stats);
	};
	second_moments("va", a_, 3);
	second_moments("vb", b_, 4);
	const auto va = test::read_model(dir_ / "va"), vb = test::read_model(dir_ / "vb");
	const auto plain = merged(recipe("ota", "", "va", "vb"), "plain");
	const auto normalised = merged(recipe("ota", "parameters: {normalise: true, power: 1}\n", "va", "vb"), "norm");
	for (const auto& [name, base] : base_) {
		double mean_a = 0, mean_b = 0;
		for (size_t i = 0; i < base.size(); ++i) {
			mean_a += va.at(name)[i] / static_cast<double>(base.size());
			mean_b += vb.at(name)[i] / static_cast<double>(base.size());
		}
		for (size_t i = 0; i < base.size(); i += 5) {
			double wa = std::sqrt(va.at(name)[i]) + 1e-8, wb = std::sqrt(vb.at(name)[i]) + 1e-8;
			expect_near(plain, name, i, (wa * a_[name][i] + wb * b_[name][i]) / (wa + wb));
			wa = va.at(name)[i] / (mean_a + 1e-8) + 1e-8;
			wb = vb.at(name)[i] / (mean_b + 1e-8) + 1e-8;
			expect_near(normalised, name, i, (wa * a_[name][i] + wb * b_[name][i]) / (wa + wb));
		}
	}
	// FFG at density 0.5: each model keeps the half of its elements with the largest v⊙τ²;
	// elsewhere it has no weight, and where neither keeps an element, the base's value stays.
	const auto ffg = merged("merge_method: ffg\nbase_model: base\nmodels:\n  - model: a\n    parameters: {stats: va, "
	                        "density: 0.5}\n  - model: b\n    parameters: {stats: vb, density: 0.5}\n",
	                        "ffg");
	size_t from_base = 0;
	for (const auto& [name, base] : base_) {
		auto kept = [&](const Tensors& model, const Tensors& v) {
			std::vector<double> saliency(base.size());
			for (size_t i = 0; i < base.size(); ++i)
				saliency[i] = v.at(name)[i] * std::pow(static_cast<double>(model.at(name)[i]) - base[i], 2);
			std::vector<size_t> order(base.size());
			std::iota(order.begin(), order.end(), size_t{0});
			std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return saliency[x] > saliency[y]; });
			std::vector<bool> keep(base.size(), false);
			for (size_t r = 0; r < static_cast<size_t>(std::llround(0.5 * static_cast<double>(base.size()))); ++r)
				keep[order[r]] = true;
			return keep;
		};
		const auto ka = kept(a_, va), kb = kept(b_, vb);
		for (size_t i = 0; i < base.size(); ++i) {
			const double wa = ka[i] ? std::sqrt(va.at(name)[i]) + 1e-8 : 0,
			             wb = kb[i] ? std::sqrt(vb.at(name)[i]) + 1e-8 : 0;
			const double expected = wa + wb > 0 ? (wa * a_[name][i] + wb * b_[name][i]) / (wa + wb) : base[i];
			from_base += wa + wb == 0;
			expect_near(ffg, name, i, expected);
		}
	}
	EXPECT_GT(from_base, 0u);
	EXPECT_NE(merge_error("merge_method: ota\nmodels:\n  - model: a\n    parameters: {stats: va, density: 0.5}\n"
	                      "  - model: b\n    parameters: {stats: vb}\n")
	              .find("density < 1 grafts onto the base: set base_model"),
	          std::string::npos);
}

// RCP: a's Fisher protects it; b's loss gradient says where b's task vector is grafted on.
TEST_F(DataMethodsTest, RcpGraftsWhereTheDomainNeedsItMoreThanTheProtectedModelMinds) {
	write_fisher("fa", a_, 5);
	std::vector<Stat> gradient;
	uint64_t seed = 6;
	for (const auto& [name, values] : b_) {
		Stat st{name, shape_of(name), std::vector<float>(values.size())};
		for (auto& v : st.values)
			v = (draw(seed) - 0.5f) * 0.2f;
		gradient.push_back(std::move(st));
	}
	write_stats(dir_ / "gb", "gradient", gradient);
	const auto fa = test::read_model(dir_ / "fa"), gb = test::read_model(dir_ / "gb");
	auto rcp = [](const std::string& stats_a, const std::string& stats_b) {
		return "merge_method: rcp\nparameters: {lambda: 50}\nbase_model: base\nmodels:\n  - model: a\n    "
		       "parameters: {stats: " +
		       stats_a + "}\n  - model: b\n    parameters: {stats: " + stats_b + "}\n";
	};
	const auto out = merged(rcp("fa", "gb"));
	size_t grafted = 0, kept = 0;
	for (const auto& [name, base] : base_)
		for (size_t i = 0; i < base.size(); ++i) {
			const double ta = a_[name][i], tb = b_[name][i];
			const double constraint = gb.at(name)[i] * tb + 50 * fa.at(name)[i] * ta * ta * (ta - tb) * (ta - tb);
			const bool graft = constraint <= 0;
			(graft ? grafted : kept)++;
			expect_near(out, name, i, ta + (graft ? tb - base[i] : 0));
		}
	EXPECT_GT(grafted, 0u);
	EXPECT_GT(kept, 0u);
	EXPECT_NE(merge_error(rcp("gb", "gb")).find("no model brings Fisher statistics"), std::string::npos);
	write_fisher("fb", b_, 7);
	EXPECT_NE(merge_error(rcp("fa", "fb")).find("both bring a Fisher"), std::string::npos);
	write_stats(dir_ / "sg", "gram", grams(1, 20));
	EXPECT_NE(merge_error(rcp("fa", "sg")).find("holds gram statistics; method 'rcp' needs fisher|gradient"),
	          std::string::npos);
}

TEST_F(DataMethodsTest, StatisticsThatDoNotFitAreRefused) {
	write_fisher("fa", a_, 1);
	write_stats(dir_ / "sa", "gram", grams(1, 20));
	write_stats(dir_ / "sb", "gram", grams(2, 20));
	EXPECT_NE(merge_error(recipe("regmean", "", "fa")).find("holds fisher statistics; method 'regmean' needs gram"),
	          std::string::npos);
	EXPECT_NE(merge_error("merge_method: regmean\nmodels:\n  - model: a\n    parameters: {stats: sa}\n  - model: b\n")
	              .find("needs gram statistics of model 'b'"),
	          std::string::npos);
	EXPECT_NE(merge_error(recipe("regmean", "", "missing")).find("missing is not a folder"), std::string::npos);
	EXPECT_NE(merge_error(recipe("regmean", "", "a")).find("is not a weld stats output"), std::string::npos);
	EXPECT_NE(
	    merge_error(recipe("regmean", "parameters: {alpha: high}\n")).find("'alpha' must be a number, got 'high'"),
	    std::string::npos);
	const auto name = grams(1, 4)[0].name;
	write_stats(dir_ / "wrong_shape", "gram", {{name, {3, 3}, std::vector<float>(9, 1)}});
	EXPECT_NE(merge_error(recipe("regmean", "", "wrong_shape")).find("tensor '" + name + "' has shape [3, 3]"),
	          std::string::npos);
	write_stats(dir_ / "other_model", "gram", {{"model.layers.9.mlp.up_proj.weight", {2, 2}, {1, 0, 0, 1}}});
	EXPECT_NE(merge_error(recipe("regmean", "", "other_model")).find("is not a tensor of model 'a'"),
	          std::string::npos);
	// A Fisher file lacking a tensor.
	write_stats(dir_ / "partial", "fisher",
	            {{"model.norm.weight", shape_of("model.norm.weight"), a_["model.norm.weight"]}});
	EXPECT_NE(merge_error(recipe("fisher", "", "partial", "fa")).find("no fisher statistics for tensor"),
	          std::string::npos);
	EXPECT_FALSE(fs::exists(dir_ / "failed"));
}

} // namespace
} // namespace weld
