// Fixtures for streaming-merge tests: a bfloat16 family (base + 3 fine-tunes) merged through
// run_merge, and a comparison of any streaming method against its whole-tensor reference.
#pragma once

#include "exec/merge.h"
#include "methods/method.h"
#include "methods/reference.h"
#include "test_util.h"
#include "testing/tiny_llama.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

namespace weld {

// Base + 3 bfloat16 fine-tunes whose embeddings (1100 x 1024) span two work items of the executor.
class StreamingMergeTest : public ::testing::Test {
protected:
	void SetUp() override {
		spec_ = {.layers = 1, .hidden = hidden_, .intermediate = 64, .vocab = 1100, .heads = 2, .kv_heads = 1};
		spec_.dtype = DType::BF16;
		const auto base = make_tiny_llama(spec_, 1);
		write_tiny_llama(dir_ / "base", spec_, base);
		for (int i = 1; i <= 3; ++i)
			write_tiny_llama(dir_ / ("ft" + std::to_string(i)), spec_, perturb(base, 0.01f, 10 + i));
	}

	// base + ft1..ft3 with weights 0.75, 1, 1.25 and density 0.5 (linear: no density).
	test::Tensors merge(const std::string& method, unsigned threads) {
		std::string models;
		for (int i = 1; i <= 3; ++i)
			models += "  - model: " + (dir_ / ("ft" + std::to_string(i))).string() +
			          "\n    parameters: {weight: " + std::to_string(0.5 + 0.25 * i) +
			          (method == "linear" ? "" : ", density: 0.5") + "}\n";
		return merge_recipe("merge_method: " + method + "\nmodels:\n" + models, threads);
	}

	// recipe_body plus float32 output and, unless with_base is false, the family's base model.
	test::Tensors merge_recipe(const std::string& recipe_body, unsigned threads, bool with_base = true) {
		const std::string name = "out" + std::to_string(outputs_++);
		const std::string recipe =
		    recipe_body + "dtype: float32\n" + (with_base ? "base_model: " + (dir_ / "base").string() + "\n" : "");
		test::write_file(dir_ / (name + ".yml"), recipe);
		MergeOptions options;
		options.recipe_path = dir_ / (name + ".yml");
		options.out_dir = dir_ / name;
		options.seed = 5;
		options.exec.threads = threads;
		options.exec.memory_budget = memory_budget_;
		run_merge(options);
		last_bytes_ = test::read_file(dir_ / name / "model.safetensors");
		return test::read_model(dir_ / name);
	}

	test::Tensors inputs(const std::string& model) { return test::read_model(dir_ / model); }

	int hidden_ = 1024;
	uint64_t memory_budget_ = ExecOptions{}.memory_budget;
	TinyLlamaSpec spec_;
	test::TempDir dir_;
	int outputs_ = 0;
	std::string last_bytes_;
};

// The family with rows of 1000 elements, which cross block boundaries (DELLA ranks within rows),
// merged with a memory budget of 12 MB: two threads' streaming buffers (4.4 MB each at base + 3)
// but not the embedding's inputs as well, which are released item by item as they stream.
class StreamingMethodsTest : public StreamingMergeTest {
protected:
	StreamingMethodsTest() {
		hidden_ = 1000;
		memory_budget_ = 12'000'000;
	}

	// method on base + ft1..ft3 (weights 0.75, 1, 1.25 unless model_params says otherwise) at
	// --threads 1 and 2: both must give the same bytes; returns the largest difference of any
	// tensor from the method's whole-tensor reference run here on the same float32 inputs.
	// Without weights: no weight parameter; model_count: how many fine-tunes take part.
	double merge_against_reference(const std::string& method, const std::string& global_params,
	                               const std::string& model_params, bool weights = true, int model_count = 3) {
		std::string models;
		for (int i = 1; i <= model_count; ++i) {
			std::string params = weights ? "weight: " + std::to_string(0.5 + 0.25 * i) : "";
			if (!model_params.empty()) params += (params.empty() ? "" : ", ") + model_params;
			models +=
			    "  - model: " + (dir_ / ("ft" + std::to_string(i))).string() + "\n    parameters: {" + params + "}\n";
		}
		const std::string recipe =
		    "merge_method: " + method + "\nparameters: {" + global_params + "}\nmodels:\n" + models;
		const auto merged = merge_recipe(recipe, 2);
		const std::string two = last_bytes_;
		merge_recipe(recipe, 1);
		EXPECT_EQ(last_bytes_, two) << method << ": thread count changed the output";

		const MergeMethod* m = find_method(method);
		const auto* reference = dynamic_cast<const WholeTensorReference*>(m);
		if (!reference) {
			ADD_FAILURE() << method << " keeps no whole-tensor reference";
			return 1e30;
		}
		const ModelFolder base_model(dir_ / "base");
		std::vector<test::Tensors> sources;
		for (int i = 1; i <= model_count; ++i)
			sources.push_back(inputs("ft" + std::to_string(i)));
		sources.push_back(inputs("base")); // the plan adds the base last
		const auto params = parse_params(global_params);
		const auto per_model = parse_params(model_params);
		double worst = 0;
		for (const auto& t : base_model.tensors()) {
			const std::string& name = t.info->name;
			MergeInput input;
			input.tensor_name = name;
			input.shape = t.info->shape;
			input.base_index = model_count;
			input.params = params;
			input.random_seed = 5;
			for (size_t i = 0; i < sources.size(); ++i) {
				input.sources.emplace_back(sources[i].at(name));
				ParamValues p = per_model;
				if (weights && static_cast<int>(i) < model_count) p["weight"] = 0.5 + 0.25 * static_cast<double>(i + 1);
				input.source_params.push_back(p);
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

	// "a: 1, b: 2" as parameter values.
	static ParamValues parse_params(const std::string& text) {
		ParamValues out;
		std::stringstream in(text);
		for (std::string item; std::getline(in, item, ',');) {
			const auto colon = item.find(':');
			if (colon == std::string::npos) continue;
			std::string key = item.substr(0, colon);
			key.erase(0, key.find_first_not_of(' '));
			const std::string value = item.substr(colon + 1);
			out[key] = value.find("true") != std::string::npos    ? 1.0
			           : value.find("false") != std::string::npos ? 0.0
			                                                      : std::stod(value);
		}
		return out;
	}
};

} // namespace weld
