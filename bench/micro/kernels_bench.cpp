// Micro-benchmarks of weld's merge kernels (run with bench/micro/run), single-threaded.
//
// Throughput is reported per byte of input data: SetBytesProcessed counts each input element
// once per merge (all sources, base included; stored dtype size for conversions), however many
// passes the kernel makes over it, so GB/s compare directly with the bytes of a checkpoint.
//
// Inputs are deterministic (fixed seeds) and shaped like real bfloat16 checkpoints: base weights
// ~ N(0, 0.02), fine-tunes = base + N(0, 0.001), both rounded to bfloat16. Their deltas are then
// small multiples of the bfloat16 spacing, so magnitudes tie a lot, as in real task vectors.
#include "io/dtype.h"
#include "methods/method.h"
#include "tensor/convert.h"
#include "tensor/kernels.h"
#include "tensor/topk.h"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using weld::DType;

constexpr size_t kConvertElements = size_t{16} << 20;
constexpr size_t kMergeElements = size_t{4} << 20; // one 2048 x 2048 tensor
constexpr size_t kFinetunes = 3;
constexpr uint64_t kSeed = 20240517;

float round_bf16(float x) {
	return weld::bf16_to_f32(weld::f32_to_bf16(x));
}

// around + N(0, stddev), rounded to bfloat16; around empty means 0.
std::vector<float> bf16_normal(size_t n, double stddev, uint64_t seed, const std::vector<float>& around = {}) {
	std::mt19937_64 rng(seed);
	std::normal_distribution<float> normal(0.0f, static_cast<float>(stddev));
	std::vector<float> v(n);
	for (size_t j = 0; j < n; ++j)
		v[j] = round_bf16((around.empty() ? 0.0f : around[j]) + normal(rng));
	return v;
}

struct Checkpoints {
	std::vector<float> base;
	std::vector<std::vector<float>> finetunes;
	std::vector<float> delta; // finetunes[0] - base
};

// Built on first use so a --benchmark_filter run only pays for the data it needs.
const Checkpoints& checkpoints() {
	static const Checkpoints c = [] {
		Checkpoints k;
		k.base = bf16_normal(kMergeElements, 0.02, kSeed);
		for (size_t i = 0; i < kFinetunes; ++i)
			k.finetunes.push_back(bf16_normal(kMergeElements, 0.001, kSeed + 1 + i, k.base));
		k.delta.resize(kMergeElements);
		for (size_t j = 0; j < kMergeElements; ++j)
			k.delta[j] = k.finetunes[0][j] - k.base[j];
		return k;
	}();
	return c;
}

const std::vector<float>& convert_values() {
	static const std::vector<float> v = bf16_normal(kConvertElements, 0.02, kSeed + 100);
	return v;
}

// ---- dtype conversion ----

// convert_values() stored as dtype.
const std::vector<uint8_t>& stored(DType dtype) {
	static std::vector<uint8_t> cache[16];
	std::vector<uint8_t>& bytes = cache[static_cast<size_t>(dtype)];
	if (bytes.empty()) {
		const std::vector<float>& v = convert_values();
		bytes.resize(v.size() * weld::dtype_size(dtype));
		weld::convert_from_f32(dtype, v.data(), bytes.data(), v.size());
	}
	return bytes;
}

void to_f32(benchmark::State& state, DType dtype) {
	const std::vector<uint8_t>& src = stored(dtype);
	std::vector<float> dst(kConvertElements);
	for (auto _ : state) {
		weld::convert_to_f32(dtype, src.data(), dst.data(), dst.size());
		benchmark::DoNotOptimize(dst.data());
		benchmark::ClobberMemory();
	}
	state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(src.size()));
	state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(dst.size()));
}

void from_f32(benchmark::State& state, DType dtype) {
	const std::vector<float>& src = convert_values();
	std::vector<uint8_t> dst(src.size() * weld::dtype_size(dtype));
	for (auto _ : state) {
		weld::convert_from_f32(dtype, src.data(), dst.data(), src.size());
		benchmark::DoNotOptimize(dst.data());
		benchmark::ClobberMemory();
	}
	state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(src.size() * sizeof(float)));
	state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(src.size()));
}

// f32 is a memcpy: the memory-bandwidth floor for the others.
BENCHMARK_CAPTURE(to_f32, f32_memcpy, DType::F32)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(to_f32, bf16, DType::BF16)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(to_f32, f16, DType::F16)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(from_f32, bf16, DType::BF16)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(from_f32, f16, DType::F16)->Unit(benchmark::kMillisecond);

// ---- magnitude threshold selection (top-k of one task vector, density 0.5) ----

constexpr double kTopKDensity = 0.5;

size_t top_k_count() {
	return static_cast<size_t>(std::floor(kTopKDensity * static_cast<double>(kMergeElements)));
}

// The streaming selection driven as the executor does, one worker: every wanted pass over all
// blocks, then apply per block. Returns the passes run.
int streaming_top_k(std::span<float> values, size_t k) {
	const uint64_t blocks = weld::block_count(values.size());
	auto block_of = [&](uint64_t b) {
		const uint64_t offset = b * weld::kBlockElements;
		return values.subspan(offset, std::min<uint64_t>(weld::kBlockElements, values.size() - offset));
	};
	weld::TopKSelection selection(values.size(), k, blocks, 1);
	int passes = 0;
	for (int p = 0; p < weld::TopKSelection::kPasses; ++p) {
		if (!selection.wants_pass(p)) continue;
		for (uint64_t b = 0; b < blocks; ++b)
			selection.observe(p, b, block_of(b), 0);
		selection.end_pass(p);
		passes++;
	}
	for (uint64_t b = 0; b < blocks; ++b)
		selection.apply(b, block_of(b));
	return passes;
}

// What mergekit does (argsort of |delta|), minus the index payload: sort the magnitudes, take the
// k-th largest as threshold and zero what lies below it (ties are not broken, unlike weld).
void sort_top_k(std::span<float> values, size_t k, std::vector<float>& magnitudes) {
	magnitudes.resize(values.size());
	for (size_t j = 0; j < values.size(); ++j)
		magnitudes[j] = std::fabs(values[j]);
	std::sort(magnitudes.begin(), magnitudes.end());
	const float threshold = magnitudes[values.size() - k];
	for (float& x : values)
		if (std::fabs(x) < threshold) x = 0.0f;
}

// Each iteration restores the delta untimed, since every variant zeroes in place.
template <class Select> void top_k(benchmark::State& state, Select select) {
	const std::vector<float>& delta = checkpoints().delta;
	std::vector<float> work(delta.size());
	for (auto _ : state) {
		state.PauseTiming();
		std::memcpy(work.data(), delta.data(), delta.size() * sizeof(float));
		state.ResumeTiming();
		select(std::span<float>(work), top_k_count());
		benchmark::ClobberMemory();
	}
	state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(delta.size() * sizeof(float)));
}

void topk_streaming(benchmark::State& state) {
	// Once: the streaming selection must keep exactly what keep_top_k_by_magnitude keeps.
	std::vector<float> a = checkpoints().delta, b = a;
	const int passes = streaming_top_k(a, top_k_count());
	weld::keep_top_k_by_magnitude(b, top_k_count());
	if (a != b) {
		state.SkipWithError("TopKSelection and keep_top_k_by_magnitude disagree");
		return;
	}
	top_k(state, [](std::span<float> v, size_t k) { streaming_top_k(v, k); });
	state.counters["passes"] = passes;
}

void topk_nth_element(benchmark::State& state) {
	top_k(state, [](std::span<float> v, size_t k) { weld::keep_top_k_by_magnitude(v, k); });
}

void topk_full_sort(benchmark::State& state) {
	std::vector<float> magnitudes;
	top_k(state, [&](std::span<float> v, size_t k) { sort_top_k(v, k, magnitudes); });
}

BENCHMARK(topk_streaming)->Unit(benchmark::kMillisecond);
BENCHMARK(topk_nth_element)->Unit(benchmark::kMillisecond);
BENCHMARK(topk_full_sort)->Unit(benchmark::kMillisecond);

// ---- merge methods, through the public interface ----

struct MethodCase {
	bool with_base = true; // base first, then the fine-tunes
	size_t finetunes = kFinetunes;
	weld::ParamValues params;
	weld::ParamValues per_source; // given to every fine-tune (the base gets none)
};

// Base + `finetunes` fine-tunes, each with per_source.
MethodCase with_base(size_t finetunes, weld::ParamValues per_source, weld::ParamValues params = {}) {
	return {true, finetunes, std::move(params), std::move(per_source)};
}

// "base + 3 x 4M f32" or "3 x 4M f32": what one merge reads.
std::string sources_label(const MethodCase& c) {
	const std::string each = std::to_string(c.finetunes) + " x " + std::to_string(kMergeElements >> 20) + "M f32";
	return c.with_base ? "base + " + each : each;
}

void merge_method(benchmark::State& state, std::string_view name, const MethodCase& c) {
	const weld::MergeMethod* method = weld::find_method(name);
	if (!method) {
		state.SkipWithError(("no method " + std::string(name)).c_str());
		return;
	}
	const Checkpoints& k = checkpoints();
	weld::MergeInput input;
	input.tensor_name = "model.layers.0.mlp.up_proj.weight";
	input.shape = {2048, kMergeElements / 2048};
	input.random_seed = kSeed;
	input.params = c.params;
	if (c.with_base) {
		input.base_index = 0;
		input.sources.emplace_back(k.base);
		input.source_params.emplace_back();
	}
	for (size_t i = 0; i < c.finetunes; ++i) {
		input.sources.emplace_back(k.finetunes[i]);
		input.source_params.push_back(c.per_source);
	}
	std::vector<float> out(kMergeElements);
	try {
		for (auto _ : state) {
			method->merge(input, out);
			benchmark::DoNotOptimize(out.data());
			benchmark::ClobberMemory();
		}
	} catch (const std::exception& e) {
		state.SkipWithError(e.what());
		return;
	}
	state.SetBytesProcessed(state.iterations() *
	                        static_cast<int64_t>(input.sources.size() * kMergeElements * sizeof(float)));
	state.SetLabel(sources_label(c));
}

const weld::ParamValues kWeight1 = {{"weight", 1.0}};
const weld::ParamValues kHalfDensity = {{"weight", 1.0}, {"density", 0.5}};

BENCHMARK_CAPTURE(merge_method, linear, "linear", MethodCase{false, kFinetunes, {}, kWeight1})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(merge_method, task_arithmetic, "task_arithmetic", with_base(kFinetunes, kWeight1))
    ->Unit(benchmark::kMillisecond);
// Density 1 drops nothing: sign election plus the weighted sum.
BENCHMARK_CAPTURE(merge_method, ties_density_1, "ties", with_base(kFinetunes, {{"weight", 1.0}, {"density", 1.0}}))
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(merge_method, ties_density_half, "ties", with_base(kFinetunes, kHalfDensity))
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(merge_method, dare_ties_density_half, "dare_ties", with_base(kFinetunes, kHalfDensity))
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(merge_method, slerp, "slerp", with_base(1, {}, {{"t", 0.5}}))->Unit(benchmark::kMillisecond);

} // namespace

BENCHMARK_MAIN();
