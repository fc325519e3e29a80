// LoRA adapter combination (PEFT's add_weighted_adapter), checked against an independent NumPy
// reference (tests/lora_merge_reference.py) on small random factors.
#include "io/peft.h"
#include "lora/combine.h"
#include "lora/weighted_adapter.h"
#include "test_util.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

namespace weld {
namespace {

using lora::CombinationType;
using lora::CombineOptions;
using lora::LoraFactors;

bool have_numpy() {
	static const bool ok = std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
	return ok;
}

// Runs a Python script of tests/ with `input` on stdin; returns its stdout as JSON.
nlohmann::json run_python(const std::string& script, const nlohmann::json& input) {
	test::TempDir dir;
	test::write_file(dir / "in.json", input.dump());
	const std::string command = "/usr/bin/python3 " + std::string(WELD_SOURCE_DIR) + "/tests/" + script + " < " +
	                            (dir / "in.json").string() + " > " + (dir / "out.json").string();
	if (std::system(command.c_str()) != 0) throw std::runtime_error("failed: " + command);
	return nlohmann::json::parse(test::read_file(dir / "out.json"));
}

linalg::MatrixF random_matrix(size_t rows, size_t cols, std::mt19937& rng) {
	std::normal_distribution<float> normal(0.0f, 1.0f);
	linalg::MatrixF m(rows, cols);
	for (float& v : m.data)
		v = normal(rng);
	return m;
}

LoraFactors random_factors(size_t out, size_t in, size_t rank, double scaling, std::mt19937& rng) {
	return {random_matrix(rank, in, rng), random_matrix(out, rank, rng), scaling};
}

nlohmann::json to_json(const linalg::MatrixF& m) {
	nlohmann::json rows = nlohmann::json::array();
	for (size_t r = 0; r < m.rows; ++r) {
		std::vector<double> row(m.cols);
		for (size_t c = 0; c < m.cols; ++c)
			row[c] = m(r, c);
		rows.push_back(row);
	}
	return rows;
}

// Largest |expected - actual| over the largest |expected| (expected given as JSON rows).
double relative_error(const nlohmann::json& expected, const linalg::MatrixD& actual) {
	double worst = 0, scale = 0;
	EXPECT_EQ(expected.size(), actual.rows);
	for (size_t r = 0; r < actual.rows; ++r) {
		EXPECT_EQ(expected[r].size(), actual.cols);
		for (size_t c = 0; c < actual.cols; ++c) {
			const double e = expected[r][c].get<double>();
			worst = std::max(worst, std::abs(e - actual(r, c)));
			scale = std::max(scale, std::abs(e));
		}
	}
	return worst / std::max(scale, 1e-30);
}

linalg::MatrixD as_double(const linalg::MatrixF& m) {
	linalg::MatrixD d(m.rows, m.cols);
	std::copy(m.data.begin(), m.data.end(), d.data.begin());
	return d;
}

struct Case {
	std::vector<LoraFactors> adapters;
	std::vector<size_t> present; // adapters that have the module
	CombineOptions options;
};

// Combines with weld and with the reference; checks ΔW (and the factors, for the types whose
// factors are unique).
void check_against_reference(const Case& c) {
	std::vector<const LoraFactors*> modules;
	std::vector<size_t> ranks;
	for (const auto& a : c.adapters)
		ranks.push_back(a.a.rows);
	for (size_t i : c.present)
		modules.push_back(&c.adapters[i]);
	const size_t rank = lora::combined_rank(c.options, ranks);
	const LoraFactors got = lora::combine_module(c.options, "layers.0.q_proj", modules, c.present, rank);
	EXPECT_EQ(got.scaling, 1.0);
	EXPECT_EQ(got.a.rows, rank);
	EXPECT_EQ(got.b.cols, rank);

	nlohmann::json input{{"type", std::string(lora::to_string(c.options.type))},
	                     {"weights", c.options.weights},
	                     {"majority", c.options.majority_sign == lora::MajoritySign::Total ? "total" : "frequency"},
	                     {"seed", c.options.seed},
	                     {"module", "layers.0.q_proj"},
	                     {"rank", rank}};
	if (c.options.density) input["density"] = *c.options.density;
	if (c.options.svd_clamp) input["svd_clamp"] = *c.options.svd_clamp;
	for (size_t i : c.present)
		input["adapters"].push_back({{"a", to_json(c.adapters[i].a)},
		                             {"b", to_json(c.adapters[i].b)},
		                             {"scaling", c.adapters[i].scaling},
		                             {"index", i}});
	const nlohmann::json expected = run_python("lora_merge_reference.py", input);
	const auto delta = linalg::matmul(as_double(got.b), false, as_double(got.a), false);
	EXPECT_LT(relative_error(expected["delta"], delta), 2e-5) << lora::to_string(c.options.type);
	if (!lora::is_svd_type(c.options.type)) {
		// Padding columns aside, the factors themselves are defined.
		EXPECT_LT(relative_error(expected["a"], as_double(got.a)), 1e-6) << lora::to_string(c.options.type);
		EXPECT_LT(relative_error(expected["b"], as_double(got.b)), 1e-6) << lora::to_string(c.options.type);
	}
}

Case three_adapters(CombinationType type, std::vector<size_t> ranks, uint64_t seed, size_t out = 7, size_t in = 5) {
	std::mt19937 rng(static_cast<uint32_t>(seed));
	Case c;
	const double scalings[] = {2.0, 0.5, 1.0};
	for (size_t i = 0; i < ranks.size(); ++i)
		c.adapters.push_back(random_factors(out, in, ranks[i], scalings[i % 3], rng));
	for (size_t i = 0; i < ranks.size(); ++i)
		c.present.push_back(i);
	c.options.type = type;
	c.options.weights = {0.7, -0.4, 1.3};
	c.options.weights.resize(ranks.size(), 0.5);
	c.options.seed = 11;
	return c;
}

class LoraCombineTest : public ::testing::TestWithParam<CombinationType> {
protected:
	void SetUp() override {
		if (!have_numpy()) GTEST_SKIP() << "needs /usr/bin/python3 with NumPy (python3-numpy)";
	}
};

TEST_P(LoraCombineTest, MatchesNumPyReference) {
	const CombinationType type = GetParam();
	const bool any_rank = type == CombinationType::Cat || lora::is_svd_type(type);
	const std::vector<size_t> ranks = any_rank ? std::vector<size_t>{2, 3, 1} : std::vector<size_t>{3, 3, 3};
	for (const auto majority : {lora::MajoritySign::Total, lora::MajoritySign::Frequency})
		for (const double density : {0.5, 0.8}) {
			Case c = three_adapters(type, ranks, 5);
			c.options.density = density;
			c.options.majority_sign = majority;
			check_against_reference(c);
			if (!lora::uses_majority_sign(type)) break;
		}
}

// For svd the two present adapters' ranks sum to 5 = min(out, in): the low-rank path (the SVD of
// the stacked factors), where MatchesNumPyReference's sum of 6 takes the dense one.
TEST_P(LoraCombineTest, SkipsAdaptersWithoutTheModule) {
	const CombinationType type = GetParam();
	const bool any_rank = type == CombinationType::Cat || lora::is_svd_type(type);
	Case c = three_adapters(type, any_rank ? std::vector<size_t>{2, 4, 3} : std::vector<size_t>{2, 2, 2}, 9);
	c.present = {0, 2};
	c.options.density = 0.6;
	check_against_reference(c);
}

// Modules of 40 × 32 with rank 3 take the cheap paths: the top triplets from the Gram matrix for
// the pruning svd types, the stacked factors' SVD for svd.
TEST_P(LoraCombineTest, LargerModulesMatchNumPyReference) {
	Case c = three_adapters(GetParam(), {3, 3, 3}, 17, 40, 32);
	c.options.density = 0.3;
	check_against_reference(c);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, LoraCombineTest,
                         ::testing::Values(CombinationType::Svd, CombinationType::Linear, CombinationType::Cat,
                                           CombinationType::Ties, CombinationType::TiesSvd, CombinationType::DareLinear,
                                           CombinationType::DareTies, CombinationType::DareLinearSvd,
                                           CombinationType::DareTiesSvd, CombinationType::MagnitudePrune,
                                           CombinationType::MagnitudePruneSvd),
                         [](const auto& test_info) { return std::string(lora::to_string(test_info.param)); });

TEST_F(LoraCombineTest, SvdRankAndClampMatchReference) {
	for (const double clamp : {0.9, 0.3}) {
		Case c = three_adapters(CombinationType::Svd, {2, 3, 1}, 21);
		c.options.svd_rank = 4;
		c.options.svd_clamp = clamp;
		check_against_reference(c);
	}
}

// PEFT's svd scales each update twice (get_delta_weight includes s, the weight is w·s): with
// s = 1 it is the plain truncated SVD of Σ w_i B_i A_i, written here as a loop.
TEST(LoraCombine, SvdOfUnitScalingIsTruncatedWeightedSum) {
	std::mt19937 rng(3);
	std::vector<LoraFactors> adapters{random_factors(6, 6, 2, 1.0, rng), random_factors(6, 6, 2, 1.0, rng)};
	CombineOptions options;
	options.weights = {1.0, 1.0};
	options.svd_rank = 4; // the sum has rank 4: exact
	const LoraFactors got =
	    lora::combine_module(options, "m", {&adapters[0], &adapters[1]}, {0, 1}, lora::combined_rank(options, {2, 2}));
	for (size_t r = 0; r < 6; ++r)
		for (size_t c = 0; c < 6; ++c) {
			double want = 0, have = 0;
			for (const auto& a : adapters)
				for (size_t k = 0; k < 2; ++k)
					want += static_cast<double>(a.b(r, k)) * a.a(k, c);
			for (size_t k = 0; k < 4; ++k)
				have += static_cast<double>(got.b(r, k)) * got.a(k, c);
			EXPECT_NEAR(have, want, 1e-5);
		}
}

TEST(LoraCombine, RanksAndOptionsAreChecked) {
	CombineOptions options;
	options.type = CombinationType::Linear;
	EXPECT_NE(test::error_of([&] {
		          lora::combined_rank(options, {4, 8});
	          }).find("needs adapters of one rank"),
	          std::string::npos);
	options.type = CombinationType::Cat;
	EXPECT_EQ(lora::combined_rank(options, {4, 8}), 12u);
	options.type = CombinationType::DareTiesSvd;
	EXPECT_EQ(lora::combined_rank(options, {4, 8}), 8u);
	options.svd_rank = 3;
	EXPECT_EQ(lora::combined_rank(options, {4, 8}), 3u);

	options.weights = {1.0};
	EXPECT_NE(test::error_of([&] { lora::check_options(options, 2); }).find("--weights gives 1 weights for 2 adapters"),
	          std::string::npos);
	options.weights = {1.0, 1.0};
	EXPECT_NE(test::error_of([&] { lora::check_options(options, 2); }).find("needs --density"), std::string::npos);
	options.density = 0;
	EXPECT_NE(test::error_of([&] { lora::check_options(options, 2); }).find("density > 0"), std::string::npos);
	EXPECT_NE(test::error_of([] { lora::parse_combination_type("slerp"); }).find("unknown combination type 'slerp'"),
	          std::string::npos);
	EXPECT_NE(test::error_of([] { lora::parse_majority_sign("mean"); }).find("total, frequency"), std::string::npos);
}

TEST(LoraCombine, AdaptersOfDifferentBaseShapesAreRefused) {
	std::mt19937 rng(1);
	const LoraFactors x = random_factors(6, 5, 2, 1.0, rng), y = random_factors(6, 7, 2, 1.0, rng);
	CombineOptions options;
	options.weights = {1, 1};
	EXPECT_NE(test::error_of([&] {
		          lora::combine_module(options, "layers.3.v_proj", {&x, &y}, {0, 1}, 2);
	          }).find("module 'layers.3.v_proj': adapters update weights of different shapes"),
	          std::string::npos);
}

// --- adapters on disk and the commands ---

const std::vector<std::string> kModules = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                           "model.layers.1.self_attn.q_proj"};

// An adapter folder with rank-r random factors on kModules ([out, in] = [8, 6]), lora_alpha
// alpha; returns what was written.
PeftAdapter write_adapter(const std::filesystem::path& dir, size_t rank, double alpha, uint32_t seed, size_t in = 6) {
	std::mt19937 rng(seed);
	PeftAdapterConfig config;
	config.r = static_cast<int64_t>(rank);
	config.lora_alpha = alpha;
	config.target_modules = {"q_proj", "v_proj"};
	std::vector<LoraModule> modules;
	for (const auto& name : kModules) {
		LoraModule like;
		like.name = name;
		LoraModule m = lora::module_of(random_factors(8, in, rank, alpha / static_cast<double>(rank), rng), like);
		modules.push_back(m);
	}
	std::filesystem::create_directories(dir);
	write_peft_adapter(dir, config, modules, DType::F32);
	return read_peft_adapter(dir);
}

// ΔW = s·B·A of a module, [out, in], as a plain triple loop.
std::vector<double> update_of(const LoraModule& m) {
	std::vector<double> delta(m.out_features * m.in_features, 0.0);
	for (size_t r = 0; r < m.out_features; ++r)
		for (size_t c = 0; c < m.in_features; ++c)
			for (size_t k = 0; k < m.rank; ++k)
				delta[r * m.in_features + c] += m.scaling * m.b[r * m.rank + k] * m.a[k * m.in_features + c];
	return delta;
}

double max_difference(const std::vector<double>& x, const std::vector<double>& y) {
	EXPECT_EQ(x.size(), y.size());
	double worst = 0;
	for (size_t i = 0; i < std::min(x.size(), y.size()); ++i)
		worst = std::max(worst, std::abs(x[i] - y[i]));
	return worst;
}

TEST(LoraMergeCommand, CatWritesTheExactWeightedSumAndPeftConfig) {
	test::TempDir dir;
	const auto a1 = write_adapter(dir / "a1", 2, 4.0, 1), a2 = write_adapter(dir / "a2", 3, 1.5, 2);
	std::string err;
	ASSERT_EQ(test::run_weld(fmt::format("lora-merge {} {} {} --combination-type cat --weights 0.6,-0.4 -q",
	                                     (dir / "a1").string(), (dir / "a2").string(), (dir / "out").string()),
	                         &err),
	          0)
	    << err;
	const auto out = read_peft_adapter(dir / "out");
	EXPECT_EQ(out.config.r, 5);
	EXPECT_EQ(out.config.lora_alpha, 5.0);
	EXPECT_FALSE(out.config.use_rslora);
	EXPECT_EQ(out.config.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
	ASSERT_EQ(out.modules.size(), kModules.size());
	for (const auto& name : kModules) {
		const auto u1 = update_of(*a1.find(name)), u2 = update_of(*a2.find(name));
		std::vector<double> want(u1.size());
		for (size_t j = 0; j < want.size(); ++j)
			want[j] = 0.6 * u1[j] - 0.4 * u2[j];
		const LoraModule* got = out.find(name);
		ASSERT_NE(got, nullptr);
		EXPECT_DOUBLE_EQ(got->scaling, 1.0);
		EXPECT_LT(max_difference(update_of(*got), want), 1e-5) << name;
	}
}

// PEFT combines a single adapter linearly whatever the type: svd of one adapter with weight w
// gives A·sign(w s)√|w s| and B·√|w s|, not a re-factorised update.
TEST(LoraMergeCommand, OneAdapterIsCombinedLinearly) {
	test::TempDir dir;
	const auto a = write_adapter(dir / "a", 3, 6.0, 4);
	std::string err;
	ASSERT_EQ(
	    test::run_weld(fmt::format("lora-merge {} {} --weights -0.5 -q", (dir / "a").string(), (dir / "out").string()),
	                   &err),
	    0)
	    << err;
	const auto out = read_peft_adapter(dir / "out");
	EXPECT_EQ(out.config.r, 3);
	for (const auto& name : kModules) {
		const LoraModule &in = *a.find(name), &got = *out.find(name);
		const double root = std::sqrt(0.5 * in.scaling); // |w s| = 0.5 · 2
		for (size_t j = 0; j < in.a.size(); ++j)
			EXPECT_NEAR(got.a[j], -root * in.a[j], 1e-6);
		for (size_t j = 0; j < in.b.size(); ++j)
			EXPECT_NEAR(got.b[j], root * in.b[j], 1e-6);
	}
}

// Embedding adapters (lora_embedding_A [r, vocab], lora_embedding_B [width, r]) combine as B·A
// like any module, and stay embeddings.
TEST(LoraMergeCommand, EmbeddingModulesCombineAndStayEmbeddings) {
	test::TempDir dir;
	std::vector<PeftAdapter> inputs;
	for (uint32_t i = 0; i < 2; ++i) {
		std::mt19937 rng(40 + i);
		PeftAdapterConfig config;
		config.r = 2;
		config.lora_alpha = 2.0 * (i + 1);
		config.target_modules = {"embed_tokens"};
		LoraModule like;
		like.name = "model.embed_tokens";
		like.embedding = true;
		LoraModule m = lora::module_of(random_factors(4, 10, 2, config.lora_alpha / 2, rng), like);
		const auto path = dir / fmt::format("e{}", i);
		std::filesystem::create_directories(path);
		write_peft_adapter(path, config, {m}, DType::F32);
		inputs.push_back(read_peft_adapter(path));
		ASSERT_TRUE(inputs.back().modules.at(0).embedding);
	}
	std::string err;
	ASSERT_EQ(test::run_weld(fmt::format("lora-merge {} {} {} --combination-type linear --weights 0.5,2 -q",
	                                     (dir / "e0").string(), (dir / "e1").string(), (dir / "out").string()),
	                         &err),
	          0)
	    << err;
	const auto out = read_peft_adapter(dir / "out");
	ASSERT_EQ(out.modules.size(), 1u);
	EXPECT_TRUE(out.modules[0].embedding);
	// linear: A = Σ √(w s) A_i, B = Σ √(w s) B_i (all weights positive here), by hand.
	const LoraModule &x = inputs[0].modules[0], &y = inputs[1].modules[0];
	const double rx = std::sqrt(0.5 * x.scaling), ry = std::sqrt(2 * y.scaling);
	for (size_t j = 0; j < x.a.size(); ++j)
		EXPECT_NEAR(out.modules[0].a[j], rx * x.a[j] + ry * y.a[j], 1e-5);
	for (size_t j = 0; j < x.b.size(); ++j)
		EXPECT_NEAR(out.modules[0].b[j], rx * x.b[j] + ry * y.b[j], 1e-5);
}

TEST(LoraMergeCommand, DareIsReproducibleFromItsSeedOnAnyThreadCount) {
	test::TempDir dir;
	write_adapter(dir / "a1", 2, 2.0, 1);
	write_adapter(dir / "a2", 2, 2.0, 2);
	const auto merge = [&](const std::string& out, int seed, int threads) {
		return test::run_weld(fmt::format("lora-merge {} {} {} --combination-type dare_ties_svd --weights 1,1 "
		                                  "--density 0.5 --seed {} --threads {} -q",
		                                  (dir / "a1").string(), (dir / "a2").string(), (dir / out).string(), seed,
		                                  threads));
	};
	ASSERT_EQ(merge("x", 3, 1), 0);
	ASSERT_EQ(merge("y", 3, 3), 0);
	ASSERT_EQ(merge("z", 4, 1), 0);
	const auto bytes = [&](const std::string& out) { return test::read_file(dir / out / "adapter_model.safetensors"); };
	EXPECT_EQ(bytes("x"), bytes("y"));
	EXPECT_NE(bytes("x"), bytes("z"));
}

TEST(LoraMergeCommand, BadInputIsOneClearErrorAndWritesNothing) {
	test::TempDir dir;
	write_adapter(dir / "a1", 2, 2.0, 1);
	write_adapter(dir / "a2", 2, 2.0, 2);
	write_adapter(dir / "wide", 2, 2.0, 3, /*in=*/10);
	const auto a1 = (dir / "a1").string(), a2 = (dir / "a2").string(), out = (dir / "out").string();
	const auto fails_with = [&](const std::string& args, const std::string& message) {
		std::string err;
		EXPECT_EQ(test::run_weld("lora-merge " + args, &err), 1) << args;
		EXPECT_NE(err.find(message), std::string::npos) << err;
		EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
		EXPECT_FALSE(std::filesystem::exists(out)) << args;
	};
	fails_with(fmt::format("{} {} {} --weights 1,1", a1, (dir / "wide").string(), out),
	           "module 'model.layers.0.self_attn.q_proj': adapter " + a1 + " updates a [8, 6] weight but adapter " +
	               (dir / "wide").string() + " a [8, 10] weight");
	fails_with(fmt::format("{} {} {} --weights 1,1 --combination-type slerp", a1, a2, out),
	           "unknown combination type 'slerp'");
	fails_with(fmt::format("{} {} {} --weights 1,1,1", a1, a2, out), "--weights gives 3 weights for 2 adapters");
	fails_with(fmt::format("{} {} {} --weights 1,1 --combination-type ties", a1, a2, out), "ties needs --density");
	fails_with(fmt::format("{} {} {}", a1, a2, out), "--weights is required");
	std::filesystem::create_directories(out);
	std::string err;
	EXPECT_EQ(test::run_weld(fmt::format("lora-merge {} {} {} --weights 1,1", a1, a2, out), &err), 1);
	EXPECT_NE(err.find("exists"), std::string::npos) << err;
	EXPECT_EQ(test::run_weld(fmt::format("lora-merge {} {} {} --weights 1,1 --force -q", a1, a2, out), &err), 0) << err;
	EXPECT_TRUE(std::filesystem::exists(dir / "out" / "adapter_model.safetensors"));
}

// HF Trainer's run layout: run/checkpoint-N/{adapter files, trainer_state.json}; the losses
// logged every 5 steps fall by 0.08 a step: 1.6 at step 5, ..., 0.4 at step 20.
std::string trainer_state(int global_step) {
	nlohmann::json history = nlohmann::json::array();
	for (int step = 5; step <= global_step; step += 5)
		history.push_back(
		    {{"epoch", step / 20.0}, {"learning_rate", 1e-4}, {"loss", 2.0 - 0.08 * step}, {"step", step}});
	history.push_back({{"eval_loss", 9.0}, {"step", global_step}}); // no "loss": not a training log
	return nlohmann::json{{"global_step", global_step}, {"log_history", history}}.dump();
}

TEST(LoraMergeCommand, MwaWeighsCheckpointsByTheirTrainerStateLoss) {
	test::TempDir dir;
	const auto c10 = write_adapter(dir / "run" / "checkpoint-10", 2, 4.0, 1);
	const auto c20 = write_adapter(dir / "run" / "checkpoint-20", 2, 4.0, 2);
	test::write_file(dir / "run" / "checkpoint-10" / "trainer_state.json", trainer_state(10));
	// The second checkpoint has no state of its own: the run's final state above it is read.
	test::write_file(dir / "run" / "trainer_state.json", trainer_state(20));
	std::string err;
	ASSERT_EQ(test::run_weld(fmt::format("lora-merge {} {} {} --combination-type mwa --mwa-penalty 2 -q",
	                                     (dir / "run" / "checkpoint-10").string(),
	                                     (dir / "run" / "checkpoint-20").string(), (dir / "out").string()),
	                         &err),
	          0)
	    << err;
	// loss 1.2 at step 10, 0.4 at step 20; w ∝ loss^-2.
	const double w10 = 1 / (1.2 * 1.2), w20 = 1 / (0.4 * 0.4), total = w10 + w20;
	const auto out = read_peft_adapter(dir / "out");
	EXPECT_EQ(out.config.r, 4);
	for (const auto& name : kModules) {
		const auto u10 = update_of(*c10.find(name)), u20 = update_of(*c20.find(name));
		std::vector<double> want(u10.size());
		for (size_t j = 0; j < want.size(); ++j)
			want[j] = (w10 * u10[j] + w20 * u20[j]) / total;
		EXPECT_LT(max_difference(update_of(*out.find(name)), want), 1e-5) << name;
	}
	// By step with --svd-rank 4: the SVD of (10 ΔW_10 + 20 ΔW_20) / 30, whose rank 4 it keeps whole.
	ASSERT_EQ(test::run_weld(fmt::format("lora-merge {} {} {} --combination-type mwa --mwa-metric step --svd-rank 4 -q",
	                                     (dir / "run" / "checkpoint-10").string(),
	                                     (dir / "run" / "checkpoint-20").string(), (dir / "by_step").string()),
	                         &err),
	          0)
	    << err;
	const auto by_step = read_peft_adapter(dir / "by_step");
	EXPECT_EQ(by_step.config.r, 4);
	for (const auto& name : kModules) {
		const auto u10 = update_of(*c10.find(name)), u20 = update_of(*c20.find(name));
		std::vector<double> want(u10.size());
		for (size_t j = 0; j < want.size(); ++j)
			want[j] = (10 * u10[j] + 20 * u20[j]) / 30; // rank 4 holds the sum exactly
		EXPECT_LT(max_difference(update_of(*by_step.find(name)), want), 1e-5) << name;
	}
}

TEST(LoraMergeCommand, MwaWithoutTrainerStateSaysWhatIsMissing) {
	test::TempDir dir;
	write_adapter(dir / "a1", 2, 2.0, 1);
	write_adapter(dir / "a2", 2, 2.0, 2);
	std::string err;
	EXPECT_EQ(test::run_weld(fmt::format("lora-merge {} {} {} --combination-type mwa", (dir / "a1").string(),
	                                     (dir / "a2").string(), (dir / "out").string()),
	                         &err),
	          1);
	EXPECT_NE(err.find("no training loss found (no trainer_state.json)"), std::string::npos) << err;
	EXPECT_FALSE(std::filesystem::exists(dir / "out"));
}

// --- orthogonality diagnostics ---

nlohmann::json inspect_json(const std::vector<std::filesystem::path>& adapters) {
	std::string args = "inspect --json", out, err;
	for (const auto& a : adapters)
		args += fmt::format(" {}", a.string());
	EXPECT_EQ(test::run_weld(args, &err, &out), 0) << err;
	return nlohmann::json::parse(out);
}

// An adapter on kModules whose B columns are the unit vectors first..first+rank-1 of R^8 (mixed
// by a random A), so two adapters with disjoint ranges write to orthogonal output spaces.
void write_axis_adapter(const std::filesystem::path& dir, size_t first, size_t rank, uint32_t seed) {
	std::mt19937 rng(seed);
	PeftAdapterConfig config;
	config.r = static_cast<int64_t>(rank);
	config.lora_alpha = 1;
	config.target_modules = {"q_proj", "v_proj"};
	std::vector<LoraModule> modules;
	for (const auto& name : kModules) {
		LoraFactors f{random_matrix(rank, 6, rng), linalg::MatrixF(8, rank), 0.5};
		for (size_t k = 0; k < rank; ++k)
			f.b(first + k, k) = 3.0f;
		LoraModule like;
		like.name = name;
		modules.push_back(lora::module_of(f, like));
	}
	std::filesystem::create_directories(dir);
	write_peft_adapter(dir, config, modules, DType::F32);
}

TEST(LoraInspect, OverlapIsOneForIdenticalAndZeroForOrthogonalAdapters) {
	test::TempDir dir;
	write_adapter(dir / "a", 3, 2.0, 1);
	std::filesystem::copy(dir / "a", dir / "same");
	write_axis_adapter(dir / "low", 0, 2, 5);
	write_axis_adapter(dir / "high", 4, 3, 6);
	write_axis_adapter(dir / "mixed", 1, 2, 7); // shares e2 with "low": overlap 1/2, cosine 1

	const auto same = inspect_json({dir / "a", dir / "same"});
	ASSERT_EQ(same["overlaps"].size(), kModules.size());
	for (const auto& o : same["overlaps"]) {
		EXPECT_NEAR(o["overlap"].get<double>(), 1.0, 1e-9);
		EXPECT_NEAR(o["max_cosine"].get<double>(), 1.0, 1e-9);
		EXPECT_EQ(o["ranks"], nlohmann::json({3, 3}));
	}
	const auto apart = inspect_json({dir / "low", dir / "high", dir / "mixed"});
	ASSERT_EQ(apart["overlaps"].size(), 3 * kModules.size());
	for (const auto& o : apart["overlaps"]) {
		const auto pair = o["adapters"].get<std::vector<size_t>>();
		const double want = pair == std::vector<size_t>{0, 2} ? 0.5 : 0.0;
		const double cosine = pair == std::vector<size_t>{0, 2} ? 1.0 : 0.0;
		EXPECT_NEAR(o["overlap"].get<double>(), want, 1e-9) << o.dump();
		EXPECT_NEAR(o["max_cosine"].get<double>(), cosine, 1e-9) << o.dump();
	}
	EXPECT_NEAR(apart["summary"]["mean_overlap"].get<double>(), 0.5 / 3, 1e-9);

	std::string out, err;
	ASSERT_EQ(
	    test::run_weld(fmt::format("inspect {} {}", (dir / "low").string(), (dir / "mixed").string()), &err, &out), 0)
	    << err;
	EXPECT_NE(out.find("summary: 2 adapters, 3 module pairs: mean overlap 0.5000, mean max cosine 1.0000"),
	          std::string::npos)
	    << out;
}

TEST(LoraInspect, AdaptersAndModelsAreNotMixed) {
	test::TempDir dir;
	write_adapter(dir / "a", 2, 2.0, 1);
	const TinyLlamaSpec spec;
	write_tiny_llama(dir / "model", spec, make_tiny_llama(spec, 1));
	std::string err;
	EXPECT_EQ(test::run_weld(fmt::format("inspect {} {}", (dir / "a").string(), (dir / "model").string()), &err), 1);
	EXPECT_NE(err.find("inspect takes one model folder, or adapter folders"), std::string::npos) << err;
	std::string out;
	ASSERT_EQ(test::run_weld(fmt::format("inspect {}", (dir / "a").string()), &err, &out), 0) << err;
	EXPECT_NE(out.find("(r 2, lora_alpha 2, 3 modules)"), std::string::npos) << out;
}

// --- RMM ---

nlohmann::json read_json_file(const std::filesystem::path& path) {
	return nlohmann::json::parse(test::read_file(path));
}

// ‖ΔW_x − ΔW_y‖_F / ‖ΔW_x‖_F over kModules, by plain loops.
double relative_adapter_error(const PeftAdapter& x, const PeftAdapter& y) {
	double distance = 0, norm = 0;
	for (const auto& name : kModules) {
		const auto ux = update_of(*x.find(name)), uy = update_of(*y.find(name));
		for (size_t j = 0; j < ux.size(); ++j) {
			distance += (ux[j] - uy[j]) * (ux[j] - uy[j]);
			norm += ux[j] * ux[j];
		}
	}
	return std::sqrt(distance / norm);
}

TEST(LoraRmm, InputsInTheBasisComeBackExactly) {
	test::TempDir dir;
	const auto a1 = write_adapter(dir / "a1", 2, 4.0, 1), a2 = write_adapter(dir / "a2", 2, 1.0, 2);
	// a3's factors lie in the span of a1's and a2's: A3 = A1 + 2 A2, B3 = B1 − B2 (its own alpha).
	PeftAdapterConfig config = a1.config;
	config.lora_alpha = 3.0;
	std::vector<LoraModule> modules;
	for (const auto& name : kModules) {
		LoraModule m = *a1.find(name);
		const LoraModule& other = *a2.find(name);
		for (size_t j = 0; j < m.a.size(); ++j)
			m.a[j] += 2 * other.a[j];
		for (size_t j = 0; j < m.b.size(); ++j)
			m.b[j] -= other.b[j];
		modules.push_back(m);
	}
	std::filesystem::create_directories(dir / "a3");
	write_peft_adapter(dir / "a3", config, modules, DType::F32);
	const auto a3 = read_peft_adapter(dir / "a3");

	std::string err, out;
	ASSERT_EQ(test::run_weld(fmt::format("rmm build {} {} {} {} --rank 2", (dir / "a1").string(), (dir / "a2").string(),
	                                     (dir / "a3").string(), (dir / "rmm").string()),
	                         &err, &out),
	          0)
	    << err;
	const auto doc = read_json_file(dir / "rmm" / "rmm.json");
	for (const auto& input : doc["inputs"])
		EXPECT_LT(input["reconstruction_error"].get<double>(), 1e-6) << out;
	ASSERT_EQ(
	    test::run_weld(fmt::format("rmm revert {} 2 {}", (dir / "rmm").string(), (dir / "back").string()), &err, &out),
	    0)
	    << err;
	EXPECT_NE(out.find("input 2 (" + (dir / "a3").string() + ") reverted"), std::string::npos) << out;
	const auto back = read_peft_adapter(dir / "back");
	EXPECT_EQ(back.config.lora_alpha, 3.0);
	EXPECT_LT(relative_adapter_error(a3, back), 1e-6);
}

TEST(LoraRmm, TruncatedBasisErrorMatchesNumPyAndTheRevertedAdapter) {
	if (!have_numpy()) GTEST_SKIP() << "needs /usr/bin/python3 with NumPy (python3-numpy)";
	test::TempDir dir;
	std::vector<PeftAdapter> adapters;
	std::string args = "rmm build";
	nlohmann::json reference{{"rank", 2}, {"inputs", nlohmann::json::array()}};
	for (uint32_t i = 0; i < 3; ++i) {
		adapters.push_back(write_adapter(dir / fmt::format("a{}", i), 3, 2.0 + i, 10 + i));
		args += fmt::format(" {}", (dir / fmt::format("a{}", i)).string());
		nlohmann::json modules;
		for (const auto& name : kModules) {
			const LoraModule& m = *adapters.back().find(name);
			modules[name] = {
			    {"a", to_json(lora::factors_of(m).a)}, {"b", to_json(lora::factors_of(m).b)}, {"scaling", m.scaling}};
		}
		reference["inputs"].push_back(modules);
	}
	std::string err;
	ASSERT_EQ(test::run_weld(args + " " + (dir / "rmm").string() + " --rank 2 -q", &err), 0) << err;
	const auto expected = run_python("lora_merge_reference.py", reference)["errors"];
	const auto doc = read_json_file(dir / "rmm" / "rmm.json");
	for (size_t i = 0; i < 3; ++i) {
		const double reported = doc["inputs"][i]["reconstruction_error"].get<double>();
		EXPECT_GT(reported, 0.01); // three generic inputs do not fit in two dimensions
		EXPECT_NEAR(reported, expected[i].get<double>(), 1e-5 * expected[i].get<double>());
		ASSERT_EQ(test::run_weld(fmt::format("rmm revert {} {} {} -q", (dir / "rmm").string(), i,
		                                     (dir / fmt::format("back{}", i)).string()),
		                         &err),
		          0)
		    << err;
		EXPECT_NEAR(relative_adapter_error(adapters[i], read_peft_adapter(dir / fmt::format("back{}", i))), reported,
		            1e-5 * reported);
	}
}

TEST(LoraRmm, FineTunedModelsAreCompressedThenReverted) {
	test::TempDir dir;
	const TinyLlamaSpec spec;
	const auto base = make_tiny_llama(spec, 1);
	write_tiny_llama(dir / "base", spec, base);
	write_tiny_llama(dir / "m1", spec, perturb(base, 0.05f, 2));
	write_tiny_llama(dir / "m2", spec, perturb(base, 0.05f, 3));
	std::string err;
	ASSERT_EQ(test::run_weld(fmt::format("rmm build {} {} {} --base {} --svd-rank 3 --rank 2 -q", (dir / "m1").string(),
	                                     (dir / "m2").string(), (dir / "rmm").string(), (dir / "base").string()),
	                         &err),
	          0)
	    << err;
	ASSERT_EQ(
	    test::run_weld(fmt::format("rmm revert {} 1 {} -q", (dir / "rmm").string(), (dir / "back").string()), &err), 0)
	    << err;
	// With K = N the reverted adapter is the rank-3 compression itself: check the reported
	// compression error against it and the models' weights.
	const auto back = read_peft_adapter(dir / "back");
	const auto base_weights = test::read_model(dir / "base"), tuned = test::read_model(dir / "m2");
	double distance = 0, norm = 0;
	size_t compressed = 0;
	for (const auto& [name, values] : base_weights) {
		if (name.find("proj.weight") == std::string::npos) continue; // the 2-D weights besides embeddings
		const LoraModule* m = back.find(name.substr(0, name.size() - std::string(".weight").size()));
		ASSERT_NE(m, nullptr) << name;
		EXPECT_EQ(m->rank, 3u);
		const auto update = update_of(*m);
		for (size_t j = 0; j < values.size(); ++j) {
			const double delta = static_cast<double>(tuned.at(name)[j]) - values[j];
			distance += (update[j] - delta) * (update[j] - delta);
			norm += delta * delta;
		}
		++compressed;
	}
	EXPECT_EQ(compressed, back.modules.size());
	const auto doc = read_json_file(dir / "rmm" / "rmm.json");
	const double reported = doc["inputs"][1]["compression_error"].get<double>();
	EXPECT_NEAR(reported, std::sqrt(distance / norm), 1e-5);
	EXPECT_GT(reported, 0.1); // random updates of rank 16 keep much outside rank 3
	EXPECT_LT(doc["inputs"][1]["reconstruction_error"].get<double>(), 1e-6);
}

TEST(LoraRmm, BadInputIsOneClearErrorAndWritesNothing) {
	test::TempDir dir;
	write_adapter(dir / "a1", 2, 2.0, 1);
	write_adapter(dir / "a2", 3, 2.0, 2);
	write_adapter(dir / "a3", 2, 2.0, 3);
	const auto out = (dir / "rmm").string();
	std::string err;
	EXPECT_EQ(
	    test::run_weld(fmt::format("rmm build {} {} {}", (dir / "a1").string(), (dir / "a2").string(), out), &err), 1);
	EXPECT_NE(err.find("module 'model.layers.0.self_attn.q_proj': input " + (dir / "a1").string() + " has rank 2"),
	          std::string::npos)
	    << err;
	EXPECT_EQ(test::run_weld(
	              fmt::format("rmm build {} {} {} --rank 3", (dir / "a1").string(), (dir / "a3").string(), out), &err),
	          1);
	EXPECT_NE(err.find("--rank 3 must be between 1 and the number of inputs (2)"), std::string::npos) << err;
	EXPECT_FALSE(std::filesystem::exists(out));
	ASSERT_EQ(test::run_weld(fmt::format("rmm build {} {} {} -q", (dir / "a1").string(), (dir / "a3").string(), out)),
	          0);
	EXPECT_EQ(test::run_weld(fmt::format("rmm revert {} 2 {}", out, (dir / "back").string()), &err), 1);
	EXPECT_NE(err.find("input 2 does not exist; the basis holds inputs 0 to 1"), std::string::npos) << err;
	EXPECT_FALSE(std::filesystem::exists(dir / "back"));
}

} // namespace
} // namespace weld
