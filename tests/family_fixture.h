// A tiny Llama family in a temporary folder for the end-to-end merge tests: a base and up to
// three fine-tunes written with write_tiny_llama, recipes run through run_merge with that folder
// as the working directory, and a dtype-dependent tolerance for comparing merged values.
#pragma once

#include "exec/merge.h"
#include "test_util.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace weld::test {

// Mixed into a gtest fixture: class MyTest : public ::testing::Test, protected test::Family.
class Family {
protected:
	// How close a merged value must be to one computed in the test: one rounding step of the
	// stored dtype (f32_step for F32) times max(|x|, floor), plus absolute.
	struct Tolerance {
		double f32_step = 1e-6;
		double floor = 1e-3;
		double absolute = 1e-7;
	};

	// Writes the base make_tiny_llama(spec_, base_seed) as "base" and `finetunes` (0 to 3)
	// fine-tunes perturb(base, 0.05, finetune_seed + i) as "a", "b", "c"; their stored values go
	// to base_, a_, b_, c_. sharded: shards of 20 kB.
	void make_family(DType dtype, int layers, int finetunes, bool sharded = false, uint64_t base_seed = 7,
	                 uint64_t finetune_seed = 11) {
		spec_.layers = layers;
		spec_.dtype = dtype;
		const auto base = make_tiny_llama(spec_, base_seed);
		const uint64_t shard = sharded ? 20'000 : UINT64_MAX;
		write_tiny_llama(dir_ / "base", spec_, base, shard);
		base_ = stored_values(base, dtype);
		Tensors* stored[] = {&a_, &b_, &c_};
		for (int i = 0; i < finetunes; ++i) {
			const auto model = perturb(base, 0.05f, finetune_seed + i);
			write_tiny_llama(dir_ / std::string(1, static_cast<char>('a' + i)), spec_, model, shard);
			*stored[i] = stored_values(model, dtype);
		}
	}

	// Runs the recipe into dir_/out; model references in it are relative to dir_.
	MergeSummary merge(const std::string& recipe, const std::string& out = "out", unsigned threads = 2,
	                   uint64_t seed = 0, uint64_t memory_budget = ExecOptions{}.memory_budget) {
		write_file(dir_ / "recipe.yml", recipe);
		MergeOptions options;
		options.recipe_path = dir_ / "recipe.yml";
		options.out_dir = dir_ / out;
		options.force = true;
		options.seed = seed;
		options.exec.threads = threads;
		options.exec.memory_budget = memory_budget;
		if (max_shard_bytes_) options.exec.max_shard_bytes = max_shard_bytes_;
		const WorkingDir in_family(dir_.path());
		return run_merge(options);
	}

	// merge, then the output's values.
	Tensors merged(const std::string& recipe, const std::string& out = "out", unsigned threads = 2, uint64_t seed = 0) {
		merge(recipe, out, threads, seed);
		return read_model(dir_ / out);
	}

	// The message of the weld::Error the merge throws ("" if none).
	std::string merge_error(const std::string& recipe) {
		try {
			merge(recipe, "failed");
		} catch (const Error& e) {
			return e.what();
		}
		return "";
	}

	double tolerance(double x) const {
		const double step = spec_.dtype == DType::BF16  ? 1.0 / 128
		                    : spec_.dtype == DType::F16 ? 1.0 / 1024
		                                                : tolerance_.f32_step;
		return step * std::max(std::abs(x), tolerance_.floor) + tolerance_.absolute;
	}

	void expect_near(const Tensors& out, const std::string& name, size_t i, double expected) const {
		ASSERT_TRUE(out.count(name)) << name;
		EXPECT_NEAR(out.at(name)[i], expected, tolerance(expected)) << name << "[" << i << "]";
	}

	TempDir dir_;
	TinyLlamaSpec spec_;
	Tensors base_, a_, b_, c_;
	Tolerance tolerance_;
	uint64_t max_shard_bytes_ = 0; // 0: ExecOptions' default
};

} // namespace weld::test
