// Helpers shared by the unit tests that call one merge method directly on tiny tensors: a
// Case (the method's input), run() to merge it, value and error expectations, parameter
// builders and registry look-ups.
#pragma once

#include "methods/method.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

// Cases are written with designated initializers that leave fields at their defaults; GCC 12
// warns about that although it is well defined.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace weld::test {

using Vec = std::vector<float>;

// One call of MergeMethod::merge. Fields in the order designated initializers must name them.
struct Case {
	std::vector<Vec> sources;
	int base_index = -1;
	ParamValues params;
	std::vector<ParamValues> source_params;
	std::vector<uint64_t> shape; // empty: 1-D of the sources' length
	std::string tensor_name = "model.layers.0.mlp.up_proj.weight";
	uint64_t seed = 0;
};

// The method input of c (its sources referenced, not copied).
inline MergeInput to_input(const Case& c) {
	MergeInput input;
	input.tensor_name = c.tensor_name;
	input.shape = c.shape;
	if (input.shape.empty() && !c.sources.empty()) input.shape = {c.sources[0].size()};
	for (const Vec& s : c.sources)
		input.sources.emplace_back(s);
	input.base_index = c.base_index;
	input.params = c.params;
	input.source_params = c.source_params;
	input.random_seed = c.seed;
	return input;
}

// Merges c with the named method; the output starts as -999 so unwritten elements show. A
// missing method is a test failure (and throws std::runtime_error, which no Error check catches).
inline Vec run(std::string_view method_name, const Case& c) {
	const MergeMethod* method = find_method(method_name);
	if (!method) {
		ADD_FAILURE() << "no method " << method_name;
		throw std::runtime_error("no method " + std::string(method_name));
	}
	Vec out(c.sources.empty() ? 0 : c.sources[0].size(), -999.0f);
	method->merge(to_input(c), out);
	return out;
}

// Element-wise |actual - expected| <= tolerance. Suites whose hand-derived values are tighter pass
// their own tolerance (a file-local constant) at every call.
inline void expect_near(const Vec& actual, const Vec& expected, float tolerance = 1e-5f) {
	ASSERT_EQ(actual.size(), expected.size());
	for (size_t i = 0; i < actual.size(); ++i)
		EXPECT_NEAR(actual[i], expected[i], tolerance) << "element " << i;
}

// Runs and expects a weld::Error whose message contains the tensor name and every word given.
inline void expect_error(std::string_view method, const Case& c, std::vector<std::string> words = {}) {
	try {
		run(method, c);
		ADD_FAILURE() << method << ": expected weld::Error";
	} catch (const Error& e) {
		const std::string msg = e.what();
		words.push_back(c.tensor_name);
		for (const auto& w : words)
			EXPECT_NE(msg.find(w), std::string::npos) << method << ": '" << w << "' not in: " << msg;
	}
}

inline ParamValues weight(double w) {
	return {{"weight", w}};
}

inline ParamValues weight_density(double w, double d) {
	return {{"weight", w}, {"density", d}};
}

// One {weight: w} per source.
inline std::vector<ParamValues> weights(const std::vector<double>& w) {
	std::vector<ParamValues> out;
	for (double x : w)
		out.push_back(weight(x));
	return out;
}

// The method's global or per-model parameter of that name; nullptr if it has none.
inline const ParamDef* find_param(std::string_view method, std::string_view name) {
	const MergeMethod* m = find_method(method);
	if (!m) throw std::runtime_error("no method " + std::string(method));
	const MethodInfo& info = m->info();
	for (const auto* list : {&info.global_params, &info.model_params})
		for (const ParamDef& p : *list)
			if (p.name == name) return &p;
	return nullptr;
}

// As find_param, for parameters that must exist.
inline const ParamDef& param(std::string_view method, std::string_view name) {
	const ParamDef* p = find_param(method, name);
	if (!p) throw std::runtime_error(std::string(method) + " lacks " + std::string(name));
	return *p;
}

} // namespace weld::test
