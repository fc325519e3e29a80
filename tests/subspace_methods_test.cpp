// tsv, opcm and doge on tiny matrices: hand-derived values (derivations in the comments) and
// properties (single-model limit, rank, order dependence, projection fixed points).
#include "linalg/linalg.h"
#include "method_case.h"
#include "methods/method.h"
#include "methods/methods.h"
#include "methods/row_panel_methods.h"
#include "methods/tsv.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace weld {
namespace {

using namespace test;

// A matrix (or vector) case; sources[0] is the base unless base_index says otherwise.
Case shaped(std::vector<Vec> sources, std::vector<uint64_t> shape, ParamValues params = {},
            std::vector<ParamValues> source_params = {}, int base_index = 0) {
	return {.sources = std::move(sources),
	        .base_index = base_index,
	        .params = std::move(params),
	        .source_params = std::move(source_params),
	        .shape = std::move(shape)};
}

Vec pseudo_random(size_t n, float seed) {
	Vec v(n);
	for (size_t i = 0; i < n; ++i)
		v[i] = std::sin(seed * static_cast<float>(i + 1) + 0.3f * seed);
	return v;
}

// ---- tsv ----

TEST(SubspaceTsvTest, SingleTaskReturnsTheModel) {
	// N = 1 keeps the full rank, and the polar factor of orthonormal U, V is U, V themselves.
	const Vec base = pseudo_random(6, 1.1f), model = pseudo_random(6, 2.3f);
	expect_near(run("tsv", shaped({base, model}, {2, 3})), model);
}

TEST(SubspaceTsvTest, HandOrthogonalTasks) {
	// τ1 = diag(3, 1), τ2 = diag(0, 2); k = floor(2 / 2) = 1: task 1 keeps (e1, 3, e1), task 2
	// keeps (e2, 2, e2). The concatenations [e1 e2] are already orthonormal, so
	// Δ = diag(3, 2). base [[1, 2], [3, 4]] → [[4, 2], [3, 6]].
	const Vec base{1, 2, 3, 4}, a{4, 2, 3, 5}, b{1, 2, 3, 6};
	expect_near(run("tsv", shaped({base, a, b}, {2, 2})), {4, 2, 3, 6});
	// alpha scales the merged delta: 0.5 · diag(3, 2) = diag(1.5, 1).
	expect_near(run("tsv", shaped({base, a, b}, {2, 2}, {{"alpha", 0.5}})), {2.5, 2, 3, 5});
	// weight 2 on b doubles τ2 before the SVD: Δ = diag(3, 4).
	expect_near(run("tsv", shaped({base, a, b}, {2, 2}, {}, {{}, {}, {{"weight", 2.0}}})), {4, 2, 3, 8});
}

TEST(SubspaceTsvTest, HandOverlappingTasks) {
	// τ1 = [[2, 0], [0, 0]] keeps (e1, 2, e1); τ2 = [[1, 1], [1, 1]] keeps (w, 2, w), w = (1, 1)/√2.
	// U = V = [e1 w] (2×2, invertible), so U⊥ = V⊥ = W is a square orthogonal matrix and
	// Δ = W diag(2, 2) Wᵀ = 2 W Wᵀ = 2 I, whatever W is.
	const Vec base{0, 0, 0, 0}, a{2, 0, 0, 0}, b{1, 1, 1, 1};
	expect_near(run("tsv", shaped({base, a, b}, {2, 2})), {2, 0, 0, 2});
}

// ---- tsv out of core: tall matrices from Gram matrices ----

// Base + 3 tasks of a tall rows × 16 matrix, each a sum of 16 rank-one terms of decaying weight
// (distinct singular values, so the top-k subspaces are well defined).
Case tall_case(size_t rows, int tasks = 3) {
	const size_t cols = 16;
	std::vector<Vec> sources{pseudo_random(rows * cols, 0.37f)};
	for (int t = 0; t < tasks; ++t) {
		Vec model = sources[0];
		for (size_t j = 0; j < cols; ++j) {
			const Vec u = pseudo_random(rows, 1.3f + 0.71f * static_cast<float>(j + 5 * t));
			const Vec v = pseudo_random(cols, 2.9f + 0.53f * static_cast<float>(j + 7 * t));
			const float scale = std::pow(0.7f, static_cast<float>(j));
			for (size_t r = 0; r < rows; ++r)
				for (size_t c = 0; c < cols; ++c)
					model[r * cols + c] += scale * u[r] * v[c];
		}
		sources.push_back(std::move(model));
	}
	if (tasks != 3) return shaped(std::move(sources), {rows, cols}, {{"alpha", 0.8}});
	return shaped(std::move(sources), {rows, cols}, {{"alpha", 0.8}}, {{}, {}, {{"weight", 0.5}}, {{"weight", 2.0}}});
}

// A method's streamed form for tall matrices at any size (tsv_tall_block_merge and the like).
using RowsBlockMerge = std::unique_ptr<BlockMerge> (*)(const MergeInput&, size_t, uint64_t, size_t);

Vec stream_rows(RowsBlockMerge make, const Case& c, size_t panel_rows) {
	const MergeInput input = to_input(c);
	const auto kernel = make(input, c.sources.size(), c.sources[0].size(), panel_rows);
	EXPECT_NE(kernel, nullptr);
	Vec out(c.sources[0].size(), -999.0f);
	merge_in_blocks(*kernel, input, out);
	return out;
}

// TSV-M by its definition, in double: each task vector weight · (model − base) keeps its top-k
// singular triplets (k = floor(min(m, n) / N)) from a full SVD; the side-by-side U and Vᵀ become
// their polar factors; base + alpha · polar(U) diag(S) polar(Vᵀ).
Vec tsv_by_definition(const Case& c, size_t rows, size_t cols, double alpha, const std::vector<double>& weights) {
	const size_t tasks = c.sources.size() - 1, k = std::max<size_t>(1, std::min(rows, cols) / tasks);
	linalg::MatrixD u(rows, tasks * k), vt(tasks * k, cols);
	std::vector<double> s(tasks * k);
	for (size_t t = 0; t < tasks; ++t) {
		linalg::MatrixD tau(rows, cols);
		for (size_t i = 0; i < rows * cols; ++i)
			tau.data[i] = weights[t] * (static_cast<double>(c.sources[t + 1][i]) - c.sources[0][i]);
		const linalg::SvdD svd = linalg::svd(tau);
		for (size_t j = 0; j < k; ++j) {
			s[t * k + j] = svd.S[j];
			for (size_t r = 0; r < rows; ++r)
				u(r, t * k + j) = svd.U(r, j);
			for (size_t col = 0; col < cols; ++col)
				vt(t * k + j, col) = svd.Vt(j, col);
		}
	}
	linalg::MatrixD u_polar = linalg::polar_factor(u);
	for (size_t r = 0; r < rows; ++r)
		for (size_t j = 0; j < tasks * k; ++j)
			u_polar(r, j) *= s[j];
	const linalg::MatrixD delta = linalg::matmul(u_polar, false, linalg::polar_factor(vt), false);
	Vec out(rows * cols);
	for (size_t i = 0; i < out.size(); ++i)
		out[i] = static_cast<float>(c.sources[0][i] + alpha * delta.data[i]);
	return out;
}

// The largest difference between two merges, against the largest delta of the reference.
void expect_close_to_definition(const Vec& merged, const Vec& reference, const Vec& base, const std::string& what) {
	double largest = 0, worst = 0;
	for (size_t i = 0; i < reference.size(); ++i) {
		largest = std::max(largest, std::abs(static_cast<double>(reference[i]) - base[i]));
		worst = std::max(worst, std::abs(static_cast<double>(merged[i]) - reference[i]));
	}
	EXPECT_LT(worst, 1e-5 * largest) << what << ", largest delta " << largest;
}

// The whole-tensor merge and the streamed one, in panels of 7 rows (many panels, the last one
// partial) or the default (one panel), against a reference.
void expect_whole_and_streamed_close(const std::string& method, RowsBlockMerge make, const Case& c,
                                     const Vec& reference) {
	expect_close_to_definition(run(method, c), reference, c.sources[0], "whole tensor");
	for (size_t panel_rows : {size_t{7}, size_t{0}})
		expect_close_to_definition(stream_rows(make, c, panel_rows), reference, c.sources[0],
		                           "streamed, panel rows " + std::to_string(panel_rows));
}

TEST(SubspaceTsvTest, TallMatricesWholeOrStreamedAgreeWithTheDefinition) {
	// 3000 × 16 spans three blocks; k = 5 of 16 per task. The whole-tensor merge (this size is
	// too small to stream) and the streamed one both take eigenpairs of Gram matrices, the
	// streamed one in panels of 7 rows (many panels, the last one partial) or one panel.
	const Case c = tall_case(3000);
	expect_whole_and_streamed_close("tsv", tsv_tall_block_merge, c,
	                                tsv_by_definition(c, 3000, 16, 0.8, {1.0, 0.5, 2.0}));
}

TEST(SubspaceTsvTest, WideMatricesMergeAsTheirTranspose) {
	// The same values read as 16 × 3000: TSV-M of the transpose, through the Gram matrices of
	// its 3000 columns.
	Case c = tall_case(3000);
	c.shape = {16, 3000};
	expect_close_to_definition(run("tsv", c), tsv_by_definition(c, 16, 3000, 0.8, {1.0, 0.5, 2.0}), c.sources[0],
	                           "wide");
}

TEST(SubspaceTsvTest, WholeTensorsKeepTheProductsOfEveryPanelInRowOrder) {
	// 70000 × 16 is read whole in three panels of up to 2^19 elements (32768 rows): the output
	// pass takes each panel's rows of P = [Δ_t A_t] kept from pass 1.
	const Case c = tall_case(70000);
	expect_close_to_definition(run("tsv", c), tsv_by_definition(c, 70000, 16, 0.8, {1.0, 0.5, 2.0}), c.sources[0],
	                           "three panels");
}

TEST(SubspaceTsvTest, TallStreamGivesTheSameBytesWhateverOrderAndThreadTheBlocksCome) {
	const Case c = tall_case(3000);
	const Vec in_order = stream_rows(tsv_tall_block_merge, c, 7);
	const MergeInput input = to_input(c);
	const uint64_t n = c.sources[0].size(), blocks = block_count(n);
	const auto kernel = tsv_tall_block_merge(input, c.sources.size(), n, 7);
	std::vector<std::vector<std::span<const float>>> views(blocks);
	auto block_at = [&](uint64_t b) {
		const uint64_t offset = b * kBlockElements, size = std::min(kBlockElements, n - offset);
		for (const auto& source : input.sources)
			views[b].push_back(source.subspan(offset, size));
		return Block{.index = b, .offset = offset, .sources = views[b]};
	};
	std::vector<Block> all;
	for (uint64_t b = 0; b < blocks; ++b)
		all.push_back(block_at(b));
	for (int pass = 0; pass < kernel->stat_passes(); ++pass) {
		// The last block first, from a second thread, while this one passes the others.
		std::thread late([&] { kernel->observe(pass, all[blocks - 1], 1); });
		for (uint64_t b = 0; b + 1 < blocks; ++b)
			kernel->observe(pass, all[b], 0);
		late.join();
		kernel->end_pass(pass);
	}
	Vec out(n, -999.0f);
	for (uint64_t b = blocks; b-- > 0;)
		kernel->merge(all[b], std::span<float>(out).subspan(all[b].offset, all[b].size()), 0);
	EXPECT_EQ(std::memcmp(out.data(), in_order.data(), n * sizeof(float)), 0);
}

TEST(SubspaceTsvTest, AbandonEndsTheWaitOfABlockFarAhead) {
	// A block far ahead of its turn waits for the ones before it; when another thread's pass fails
	// the executor calls abandon(), and the wait ends instead of hanging.
	const size_t rows = 300 * kBlockElements / 16; // 300 blocks of 16 columns
	const Case c = shaped(std::vector<Vec>(4, Vec(rows * 16, 0.0f)), {rows, 16});
	const MergeInput input = to_input(c);
	const uint64_t n = c.sources[0].size();
	ASSERT_GT(block_count(n), 290u);
	const auto kernel = tsv_tall_block_merge(input, c.sources.size(), n, 0);
	std::vector<std::span<const float>> views;
	for (const auto& source : input.sources)
		views.push_back(source.subspan(290 * kBlockElements, kBlockElements));
	std::thread ahead(
	    [&] { kernel->observe(0, Block{.index = 290, .offset = 290 * kBlockElements, .sources = views}, 1); });
	std::this_thread::sleep_for(std::chrono::milliseconds(50));
	kernel->abandon();
	ahead.join();
}

TEST(SubspaceTsvTest, MatricesStreamOnceTheirWholeTensorJobTakesAGibibyte) {
	// Every source and the output in float32: 2^30 bytes are 53,687,091.2 elements at base + 3
	// (5 buffers) and 26,843,545.6 at base + 8 (10 buffers).
	EXPECT_FALSE(row_panels_stream(53'687'091, 4));
	EXPECT_TRUE(row_panels_stream(53'687'092, 4));
	EXPECT_FALSE(row_panels_stream(32'000 * 1024, 4)); // an embedding of 32000 × 1024 at base + 3
	EXPECT_TRUE(row_panels_stream(32'000 * 1024, 9));  // and at base + 8
	EXPECT_TRUE(row_panels_stream(uint64_t{128'256} * 2048, 4));
}

TEST(SubspaceTsvTest, WideOrSmallMatricesAreNotStreamed) {
	const Case c = tall_case(3000);
	MergeInput input = to_input(c);
	const MergeMethod& tsv = *find_method("tsv");
	EXPECT_EQ(tsv.block_merge(input, c.sources.size(), c.sources[0].size(), 2), nullptr); // too small to stream
	input.shape = {16, 3000};                                                             // wide
	EXPECT_EQ(tsv_tall_block_merge(input, c.sources.size(), c.sources[0].size()), nullptr);
	input.shape = {4000, 12}; // rows cross blocks: 16384 is not a multiple of 12
	EXPECT_EQ(tsv_tall_block_merge(input, c.sources.size(), c.sources[0].size()), nullptr);
}

TEST(SubspaceTsvTest, VectorsTakeTheMeanTaskVector) {
	// 1-D: mean of τ1 = (1, 2, 3) and τ2 = (3, 2, 1) is (2, 2, 2); alpha 2 doubles it.
	const Vec base{1, 1, 1}, a{2, 3, 4}, b{4, 3, 2};
	expect_near(run("tsv", shaped({base, a, b}, {3})), {3, 3, 3});
	expect_near(run("tsv", shaped({base, a, b}, {3}, {{"alpha", 2.0}})), {5, 5, 5});
}

TEST(SubspaceTsvTest, MergedDeltaHasRankAtMostNTimesK) {
	// 7×9, N = 2 → k = 3: rank(Δ) <= 6 < 7.
	const Vec base = pseudo_random(63, 0.7f), a = pseudo_random(63, 1.9f), b = pseudo_random(63, 3.1f);
	const Vec out = run("tsv", shaped({base, a, b}, {7, 9}));
	linalg::MatrixD delta(7, 9);
	for (size_t i = 0; i < out.size(); ++i)
		delta.data[i] = static_cast<double>(out[i]) - base[i];
	const linalg::SvdD s = linalg::svd(delta);
	EXPECT_GT(s.S[5], 1e-3);
	EXPECT_LT(s.S[6], 1e-5 * s.S[0]);
}

TEST(SubspaceTsvTest, ErrorsNameTheTensor) {
	const Vec x{1, 2, 3, 4};
	EXPECT_THROW(run("tsv", shaped({x, x}, {2, 2}, {}, {}, -1)), Error); // no base
	EXPECT_THROW(run("tsv", shaped({x}, {2, 2})), Error);                // only the base
	Vec bad = x;
	bad[1] = std::nanf("");
	expect_error("tsv", shaped({x, bad, x}, {2, 2})); // NaN: an error naming the tensor
}

TEST(SubspaceWorkingBytesTest, GramMethodsCountTheirSquareMatricesOfTheSmallerSide) {
	// 8192 × 2048 (or its transpose), base + 3: n = 2048. tsv holds N + 8 = 11 n × n doubles,
	// opcm N + 8 = 11 (a pass per model), and as a whole tensor both keep rows (at most m × n
	// doubles; not when streamed), core_space N + 2 = 5; besides them every task's panel of 2^19
	// elements (block values and panel in float, a copy in double, and the output's) and 256 waiting
	// blocks of the three tasks.
	Case c = shaped({Vec{}, Vec{}, Vec{}, Vec{}}, {8192, 2048});
	const MergeInput input = to_input(c);
	const uint64_t square = uint64_t{2048} * 2048 * 8, extra = 4 * (uint64_t{1} << 19) * 16 + 256 * 3 * 16384 * 4;
	const uint64_t elements = uint64_t{8192} * 2048;
	EXPECT_EQ(find_method("tsv")->working_bytes(input, 4, elements), 11 * square + extra + elements * 8);
	EXPECT_EQ(find_method("opcm")->working_bytes(input, 4, elements), 11 * square + extra + elements * 8);
	Case streamed = shaped({Vec{}, Vec{}, Vec{}, Vec{}}, {65536, 2048}); // 2.7 GB of float32 copies: streams
	EXPECT_EQ(find_method("opcm")->working_bytes(to_input(streamed), 4, 8 * elements), 11 * square + extra);
	EXPECT_EQ(find_method("tsv")->working_bytes(to_input(streamed), 4, 8 * elements), 11 * square + extra);
	EXPECT_EQ(find_method("core_space")->working_bytes(input, 4, elements), 5 * square + extra);
	c.shape = {2048, 8192};
	EXPECT_EQ(find_method("tsv")->working_bytes(to_input(c), 4, elements), 11 * square + extra + elements * 8);
	c.shape = {elements};
	EXPECT_EQ(find_method("tsv")->working_bytes(to_input(c), 4, elements), 0u); // vectors: the mean
	EXPECT_EQ(find_method("linear")->working_bytes(to_input(c), 4, elements), 0u);
}

// ---- opcm ----

TEST(SubspaceOpcmTest, SingleModelReturnsTheModel) {
	// merged = τ1, rescaled to its own norm.
	const Vec base = pseudo_random(6, 0.4f), model = pseudo_random(6, 1.7f);
	expect_near(run("opcm", shaped({base, model}, {3, 2})), model);
}

TEST(SubspaceOpcmTest, HandFrobeniusOrthogonalTasksAdd) {
	// τ1 = [[2, 0], [0, 0]]: s = (2, 0), r = 0 (first share 1 > 0.5). τ2 = [[0, 1], [0, 0]] has
	// zero diagonal in τ1's bases (u_i = ±e_i, v_i = ±e_i): nothing removed, merged = [[2, 1],
	// [0, 0]], ‖·‖ = √5, mean norm (2 + 1)/2 = 1.5 → Δ = [[2, 1], [0, 0]] · 1.5/√5 = 0.670820...
	const Vec base{0, 0, 0, 0}, a{2, 0, 0, 0}, b{0, 1, 0, 0};
	expect_near(run("opcm", shaped({base, a, b}, {2, 2})), {1.3416408f, 0.6708204f, 0, 0});
}

TEST(SubspaceOpcmTest, HandBlockAndDiagonalRemoval) {
	// τ1 = diag(3, 2, 1): s shares (0.5, 0.833, 1); u_i, v_i = ±e_i. τ2 = all ones.
	// alpha 0.9 → r = 2: P = Uᵀ τ2 V loses its diagonal and top-left 2×2 block, so the added part
	// is [[0, 0, 1], [0, 0, 1], [1, 1, 0]]; merged = [[3, 0, 1], [0, 2, 1], [1, 1, 1]], ‖·‖² = 18;
	// mean norm (√14 + 3)/2 → scale (√14 + 3)/(2√18) = 0.794512.
	const Vec base(9, 0.0f), a{3, 0, 0, 0, 2, 0, 0, 0, 1}, b(9, 1.0f);
	const float s2 = 0.79451194f;
	expect_near(run("opcm", shaped({base, a, b}, {3, 3}, {{"alpha", 0.9}})),
	            {3 * s2, 0, s2, 0, 2 * s2, s2, s2, s2, s2});
	// alpha 0.6 → r = 1: only the diagonal goes (the 1×1 block is on it): added ones − I;
	// merged = [[3, 1, 1], [1, 2, 1], [1, 1, 1]], ‖·‖² = 20 → scale (√14 + 3)/(2√20) = 0.753740.
	const float s1 = 0.75374021f;
	expect_near(run("opcm", shaped({base, a, b}, {3, 3}, {{"alpha", 0.6}})),
	            {3 * s1, s1, s1, s1, 2 * s1, s1, s1, s1, s1});
}

TEST(SubspaceOpcmTest, VectorsAreSummedAndRescaled) {
	// τ1 = (3, 4, 0) (norm 5), τ2 = (0, 0, 1) (norm 1): sum (3, 4, 1), norm √26, target 3.
	const Vec base{1, 1, 1}, a{4, 5, 1}, b{1, 1, 2};
	const float s = 0.58834841f;
	expect_near(run("opcm", shaped({base, a, b}, {3})), {1 + 3 * s, 1 + 4 * s, 1 + s});
}

TEST(SubspaceOpcmTest, OrderMatters) {
	// Sequential by design: the second model is projected off the first one's subspace.
	const Vec base(9, 0.0f), a{3, 0, 0, 0, 2, 0, 0, 0, 1}, b(9, 1.0f);
	const Vec ab = run("opcm", shaped({base, a, b}, {3, 3})), ba = run("opcm", shaped({base, b, a}, {3, 3}));
	double diff = 0;
	for (size_t i = 0; i < ab.size(); ++i)
		diff += std::abs(ab[i] - ba[i]);
	EXPECT_GT(diff, 0.1);
}

// OPCM by its definition (FusionBench's opcm.py on one tensor), in double: merged = τ1; for each
// next τ, P = Uᵀ τ V from the thin SVD of merged, Z its diagonal and top-left r × r block (r: the
// first index where the cumulative singular share exceeds alpha), merged += τ − U Z Vᵀ; finally
// merged · (mean ‖τ‖ / ‖merged‖).
Vec opcm_by_definition(const Case& c, size_t rows, size_t cols, double alpha) {
	const auto task = [&](size_t t) {
		linalg::MatrixD tau(rows, cols);
		for (size_t i = 0; i < rows * cols; ++i)
			tau.data[i] = static_cast<double>(c.sources[t + 1][i]) - c.sources[0][i];
		return tau;
	};
	const auto norm = [](const linalg::MatrixD& m) {
		double sum = 0;
		for (double v : m.data)
			sum += v * v;
		return std::sqrt(sum);
	};
	linalg::MatrixD merged = task(0);
	double norm_sum = norm(merged);
	for (size_t t = 1; t + 1 < c.sources.size(); ++t) {
		const linalg::MatrixD tau = task(t);
		norm_sum += norm(tau);
		const linalg::SvdD svd = linalg::svd(merged);
		const size_t k = svd.S.size();
		double total = 0, running = 0;
		for (double s : svd.S)
			total += s;
		size_t r = 0;
		for (size_t i = 0; i < k; ++i)
			if ((running += svd.S[i]) / total > alpha) {
				r = i;
				break;
			}
		linalg::MatrixD p = linalg::matmul(linalg::matmul(svd.U, true, tau, false), false, svd.Vt, true);
		for (size_t i = 0; i < k; ++i)
			for (size_t j = 0; j < k; ++j)
				if (!(i == j || (i < r && j < r))) p(i, j) = 0;
		const linalg::MatrixD back = linalg::matmul(linalg::matmul(svd.U, false, p, false), false, svd.Vt, false);
		for (size_t i = 0; i < merged.data.size(); ++i)
			merged.data[i] += tau.data[i] - back.data[i];
	}
	const double scale = norm_sum / static_cast<double>(c.sources.size() - 1) / norm(merged);
	Vec out(rows * cols);
	for (size_t i = 0; i < out.size(); ++i)
		out[i] = static_cast<float>(c.sources[0][i] + scale * merged.data[i]);
	return out;
}

TEST(SubspaceOpcmTest, TallMatricesWholeOrStreamedAgreeWithTheDefinition) {
	// The tsv case's 3000 × 16 base + 3 (full-rank task vectors), alpha 0.3 and 0.8: the Gram form
	// on the whole tensor and streamed in panels of 7 rows or one panel.
	Case c = tall_case(3000);
	c.source_params = {};
	for (double alpha : {0.3, 0.8}) {
		c.params = {{"alpha", alpha}};
		expect_whole_and_streamed_close("opcm", opcm_rows_block_merge, c, opcm_by_definition(c, 3000, 16, alpha));
	}
}

TEST(SubspaceOpcmTest, SixModelsTakeFivePassesAndAgreeWithTheDefinition) {
	Case c = tall_case(3000, 6);
	c.params = {{"alpha", 0.5}};
	expect_whole_and_streamed_close("opcm", opcm_rows_block_merge, c, opcm_by_definition(c, 3000, 16, 0.5));
}

TEST(SubspaceOpcmTest, WholeTensorsKeepTheMergedRowsOfEveryPanelInRowOrder) {
	// 70000 × 16 read whole in three panels, four models: the merged rows kept from pass to pass.
	Case c = tall_case(70000, 4);
	c.params = {{"alpha", 0.5}};
	expect_close_to_definition(run("opcm", c), opcm_by_definition(c, 70000, 16, 0.5), c.sources[0], "three panels");
}

TEST(SubspaceOpcmTest, WideMatricesMergeAsTheirTranspose) {
	Case c = tall_case(3000);
	c.source_params = {};
	c.params = {{"alpha", 0.5}};
	c.shape = {16, 3000};
	expect_close_to_definition(run("opcm", c), opcm_by_definition(c, 16, 3000, 0.5), c.sources[0], "wide");
	MergeInput input = to_input(c);
	EXPECT_EQ(opcm_rows_block_merge(input, c.sources.size(), c.sources[0].size()), nullptr); // wide: not streamed
}

TEST(SubspaceOpcmTest, NeedsABase) {
	const Vec x{1, 2, 3, 4};
	EXPECT_THROW(run("opcm", shaped({x, x}, {2, 2}, {}, {}, -1)), Error);
	EXPECT_THROW(run("opcm", shaped({x}, {2, 2})), Error);
}

// ---- doge ----

TEST(SubspaceDogeTest, NoStepsIsNormWeightedTaskArithmetic) {
	// λ_i = lambda/‖τ_i‖: τ1 = (3, 4) → 0.5 · (0.6, 0.8) = (0.3, 0.4); τ2 = (0, 2) → (0, 0.5).
	const Vec base{1, 1}, a{4, 5}, b{1, 3};
	expect_near(run("doge", shaped({base, a, b}, {1, 2}, {{"steps", 0}, {"density", 1}, {"lambda", 0.5}})),
	            {1.3f, 1.9f});
}

TEST(SubspaceDogeTest, OneAdamStepMovesByTheLearningRate) {
	// τ = (3, 4), lambda 0.5 → λ = 0.1, Λ = 0.1; δ = 0: e = τ·(τ − 0.1 τ) = 0.9 · 25 = 22.5 > 0,
	// so the gradient −2 Λ e τ is negative in both entries. subspace 6 → rank floor(1/6) = 0: no
	// projection. Adam's first step is lr · sign(−g) = +0.01 each: δ = (0.01, 0.01);
	// out = base + 0.1 · (3.01, 4.01) = base + (0.301, 0.401).
	const Vec base{0, 0}, a{3, 4};
	expect_near(run("doge", shaped({base, a}, {1, 2}, {{"steps", 1}, {"density", 1}, {"lambda", 0.5}, {"lr", 0.01}})),
	            {0.301f, 0.401f}, 1e-6f);
}

TEST(SubspaceDogeTest, FullSharedSubspaceFreezesTheModification) {
	// 2×3 with subspace 1: the shared basis spans all of R², every projected gradient is 0.
	const Vec base = pseudo_random(6, 0.5f), a = pseudo_random(6, 1.5f), b = pseudo_random(6, 2.5f);
	const ParamValues frozen{{"subspace", 1}, {"steps", 50}, {"lr", 0.01}, {"density", 1}};
	const ParamValues none{{"steps", 0}, {"density", 1}};
	expect_near(run("doge", shaped({base, a, b}, {2, 3}, frozen)), run("doge", shaped({base, a, b}, {2, 3}, none)));
	// Without the projection (subspace 6 → rank 0) the steps do change the result.
	const Vec moved = run("doge", shaped({base, a, b}, {2, 3}, {{"subspace", 6}, {"steps", 50}, {"lr", 0.01}}));
	const Vec still = run("doge", shaped({base, a, b}, {2, 3}, {{"subspace", 6}, {"steps", 0}}));
	double diff = 0;
	for (size_t i = 0; i < moved.size(); ++i)
		diff += std::abs(moved[i] - still[i]);
	EXPECT_GT(diff, 1e-3);
}

TEST(SubspaceDogeTest, DensityKeepsTheLargestEntries) {
	// τ = [[1, −3], [2, 0.5]], density 0.5: drop 4 − 2 = 2, 2nd smallest |τ| = 1, keep |τ| >= 1.
	// λ = 1/√14.25 = 0.264906: out = (1, −3, 2, 0) · 0.264906.
	const Vec base{0, 0, 0, 0}, a{1, -3, 2, 0.5};
	expect_near(run("doge", shaped({base, a}, {2, 2}, {{"steps", 0}, {"density", 0.5}, {"lambda", 1}})),
	            {0.26490647f, -0.79471941f, 0.52981294f, 0});
}

TEST(SubspaceDogeTest, VectorsKeepTheBase) {
	const Vec base{1, 2, 3}, a{2, 3, 4};
	expect_near(run("doge", shaped({base, a}, {3})), base);
}

TEST(SubspaceDogeTest, NeedsABase) {
	const Vec x{1, 2, 3, 4};
	EXPECT_THROW(run("doge", shaped({x, x}, {2, 2}, {}, {}, -1)), Error);
}

} // namespace
} // namespace weld
