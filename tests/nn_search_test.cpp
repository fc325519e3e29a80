// weld search: each algorithm on problems whose optimum is known without it (CMA-ES and MAP on
// quadratics, M2N2 on two objectives that pull apart, the sweep's grid count), the Pareto front of
// constructed points, the SPEC's errors, and the search end to end on a tiny model family: the
// same SPEC and seed give the same best recipe, and a journal cut off mid-line resumes to it.
#include "exec/distributed.h"
#include "nn/llama.h"
#include "nn_family.h"
#include "nn_test_util.h"
#include "search/algorithms.h"
#include "search/search.h"
#include "search/spec.h"
#include "util/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

namespace weld {
namespace {

namespace fs = std::filesystem;
using search::Evaluated;
using test::error_of;

// Runs an algorithm for `budget` evaluations of objectives(x); returns the best evaluation.
Evaluated optimize(search::Algorithm& algorithm, uint64_t budget,
                   const std::function<std::vector<double>(const std::vector<double>&)>& objectives) {
	Evaluated best{{}, -1e300, {}};
	uint64_t used = 0;
	while (used < budget) {
		const auto asked = algorithm.ask(budget - used);
		if (asked.empty()) break;
		std::vector<Evaluated> told;
		for (const auto& x : asked) {
			const auto o = objectives(x);
			double mean = 0;
			for (double v : o)
				mean += v / static_cast<double>(o.size());
			told.push_back({x, mean, o});
			if (mean > best.fitness) best = told.back();
		}
		algorithm.tell(told);
		used += asked.size();
	}
	return best;
}

TEST(SearchAlgorithms, CmaEsFindsTheMaximumOfAQuadratic) {
	const std::vector<double> target = {0.2, 0.7, 0.5, 0.9};
	auto algorithm = search::make_algorithm("cma_es", {{"sigma", 0.3}}, 4, {1}, 7, 400);
	const auto best = optimize(*algorithm, 400, [&](const std::vector<double>& x) {
		double f = 0;
		for (size_t i = 0; i < 4; ++i)
			f -= (x[i] - target[i]) * (x[i] - target[i]) * static_cast<double>(i + 1); // ill-conditioned
		return std::vector<double>{f};
	});
	for (size_t i = 0; i < 4; ++i)
		EXPECT_NEAR(best.genome[i], target[i], 0.02) << i;
}

// Two objectives whose maxima are at opposite corners: the best mean is on the front between them,
// at x = (0.4, 0.4) for these two paraboloids, which MAP's quadratic surrogates fit exactly.
TEST(SearchAlgorithms, MapFindsTheBestMeanOfQuadraticObjectives) {
	auto objectives = [](const std::vector<double>& x) {
		return std::vector<double>{-std::pow(x[0] - 0.3, 2) - std::pow(x[1] - 0.6, 2),
		                           -std::pow(x[0] - 0.5, 2) - std::pow(x[1] - 0.2, 2)};
	};
	auto algorithm = search::make_algorithm("map", {{"samples", 20}, {"ridge", 1e-9}}, 2, {1, 1}, 3, 40);
	const auto best = optimize(*algorithm, 40, objectives);
	EXPECT_NEAR(best.genome[0], 0.4, 0.03);
	EXPECT_NEAR(best.genome[1], 0.4, 0.03);
}

// Each objective rewards one gene near 1 and the other near 0: M2N2's children mix their parents
// and climb from the random first archive.
TEST(SearchAlgorithms, M2n2ImprovesOnItsFirstArchive) {
	auto objectives = [](const std::vector<double>& x) {
		return std::vector<double>{x[0] * (1 - x[2]), x[1] * (1 - x[3]), 1 - std::abs(x[0] - x[1])};
	};
	auto algorithm = search::make_algorithm("m2n2", {{"archive", 6}, {"children", 3}}, 4, {1, 1, 1}, 5, 300);
	const auto first = optimize(*search::make_algorithm("m2n2", {{"archive", 6}}, 4, {1, 1, 1}, 5, 6), 6, objectives);
	const auto best = optimize(*algorithm, 300, objectives);
	EXPECT_GT(best.fitness, first.fitness + 0.1);
	EXPECT_GT(best.fitness, 0.8); // the optimum is 1: x = (1, 1, 0, 0)
}

// Bayesian optimisation of the two paraboloids above: its GP finds the region of the best mean.
TEST(SearchAlgorithms, BayesMoApproachesTheBestMeanOfTwoObjectives) {
	auto objectives = [](const std::vector<double>& x) {
		return std::vector<double>{-std::pow(x[0] - 0.3, 2) - std::pow(x[1] - 0.6, 2),
		                           -std::pow(x[0] - 0.5, 2) - std::pow(x[1] - 0.2, 2)};
	};
	auto algorithm = search::make_algorithm("bayes_mo", {{"initial", 8}, {"batch", 2}}, 2, {1, 1}, 11, 40);
	const auto first = optimize(*search::make_algorithm("bayes_mo", {{"initial", 8}}, 2, {1, 1}, 11, 8), 8, objectives);
	const auto best = optimize(*algorithm, 40, objectives);
	EXPECT_GT(best.fitness, first.fitness);
	EXPECT_GT(best.fitness, -0.1 - 0.01); // the best mean is −0.1, at (0.4, 0.4)
}

TEST(SearchAlgorithms, SweepWalksTheSimplexGridAndTheFrontIsTheNonDominated) {
	auto algorithm = search::make_algorithm("sweep", {{"steps", 4}}, 3, {1}, 0, 1000);
	size_t points = 0;
	optimize(*algorithm, 1000, [&](const std::vector<double>& x) {
		EXPECT_NEAR(x[0] + x[1] + x[2], 1, 1e-12);
		++points;
		return std::vector<double>{0};
	});
	EXPECT_EQ(points, 15u); // C(4 + 2, 2)
	const std::vector<std::vector<double>> p = {{1, 0}, {0, 1}, {0.5, 0.5}, {0.4, 0.4}, {0.5, 0.5}, {0.2, 0.9}};
	EXPECT_EQ(search::pareto_front(p), (std::vector<size_t>{0, 1, 2, 4, 5}));
}

const char* kSearchConfig = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 258, "hidden_size": 8,
  "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
  "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "initializer_range": 0.3})";

class Search : public ::testing::Test {
protected:
	void SetUp() override {
		test::write_noisy_family(tmp.path(), kSearchConfig, 2, 300, 0.3);
		test::write_file(tmp / "val.txt", "hello world\nmerge me\n"); // -log perplexity: a fitness that varies
	}
	std::string spec(const std::string& algorithm, const std::string& extra = "") const {
		return fmt::format("method: task_arithmetic\nbase_model: {0}/base\nmodels: [{0}/e0, {0}/e1]\n"
		                   "search:\n  weight: {{min: 0, max: 1, per: model}}\n  lambda: {{min: 0.2, max: 1.5}}\n"
		                   "algorithm: {1}\nfitness:\n  tasks: [cipher_copy, cipher_sort]\n  held_out: 4\n"
		                   "  files: [{{data: {0}/val.txt, weight: 0.5}}]\nbudget: {{evaluations: 10}}\nseed: 4\n{2}",
		                   tmp.path().string(), algorithm, extra);
	}
	search::SearchResult run(const std::string& name, const std::string& text, bool resume = false) {
		test::write_file(tmp / (name + ".yml"), text);
		search::SearchOptions o;
		o.spec = tmp / (name + ".yml");
		o.out = tmp / name;
		o.resume = resume;
		o.quiet = true;
		return search::run_search(o, Distributed());
	}
	test::TempDir tmp;
};

TEST_F(Search, SameSeedSameBestAndAJournalCutOffResumesToIt) {
	const auto text = spec("{name: cma_es, population: 4}");
	const auto a = run("a", text);
	EXPECT_EQ(a.evaluations, 10u);
	// best.yml less its first line, which names the SPEC file
	auto best_of = [&](const std::string& out) {
		const auto written = test::read_file(tmp / out / "best.yml");
		return written.substr(written.find('\n'));
	};
	const auto best = best_of("a");
	run("b", text);
	EXPECT_EQ(best_of("b"), best);
	EXPECT_TRUE(fs::exists(tmp / "a" / "model" / "model.safetensors"));
	EXPECT_FALSE(fs::exists(tmp / "a" / ".scratch"));
	// As a kill leaves it: 5 complete lines and a sixth cut off.
	std::ifstream in(tmp / "a" / "journal.jsonl");
	std::string line, kept;
	for (int i = 0; i < 6 && std::getline(in, line); ++i)
		kept += i < 5 ? line + "\n" : line.substr(0, line.size() / 2);
	fs::remove(tmp / "a" / "best.yml");
	test::write_file(tmp / "a" / "journal.jsonl", kept);
	const auto resumed = run("a", text, true);
	EXPECT_EQ(resumed.replayed, 5u);
	EXPECT_EQ(best_of("a"), best);
	// The journal then holds every evaluation once.
	std::ifstream again(tmp / "a" / "journal.jsonl");
	size_t lines = 0;
	while (std::getline(again, line))
		++lines;
	EXPECT_EQ(lines, 10u);
	// map writes its Pareto front.
	run("m", spec("{name: map, samples: 6}"));
	EXPECT_NE(test::read_file(tmp / "m" / "pareto.md").find("| candidate | fitness | cipher_copy |"),
	          std::string::npos);
	EXPECT_EQ(test::read_file(tmp / "m" / "pareto.png").substr(1, 3), "PNG");
}

TEST_F(Search, BadSpecsAreOneClearErrorBeforeAnyWork) {
	auto fails = [&](const std::string& text, const std::string& expected) {
		const auto error = error_of([&] { run("bad", text); });
		EXPECT_NE(error.find(expected), std::string::npos) << error;
		EXPECT_FALSE(fs::exists(tmp / "bad"));
	};
	fails(spec("genetic"), "unknown algorithm 'genetic'");
	auto replaced = [&](std::string text, const std::string& from, const std::string& to) {
		text.replace(text.find(from), from.size(), to);
		return text;
	};
	fails(replaced(spec("cma_es"), "min: 0.2, max: 1.5", "min: 1.5, max: 0.2"),
	      "search.lambda: the range [1.5, 0.2] is empty or inverted");
	fails(replaced(spec("cma_es"), "min: 0.2, max: 1.5", "min: 1, max: 1"), "is empty or inverted");
	fails(replaced(spec("cma_es"), "val.txt", "missing.txt"), "missing.txt: no such file");
	fails(replaced(spec("cma_es"), "evaluations: 10", "evaluations: 0"), "budget: is 0");
	fails(replaced(spec("cma_es"), "lambda: {", "gamma: {"), "method 'task_arithmetic' has no global number "
	                                                         "parameter 'gamma'");
	fails(replaced(spec("cma_es"), "cipher_sort", "cipher_nope"), "fitness.tasks");
	fails(spec("{name: cma_es, popsize: 3}"), "cma_es has no setting 'popsize'");
	fails(spec("sweep"), "sweep walks the simplex of linear weights");
	fs::create_directories(tmp / "bad");
	const auto error = error_of([&] { run("bad", spec("cma_es")); });
	EXPECT_NE(error.find("already exists"), std::string::npos) << error;
}

} // namespace
} // namespace weld
