// No method may turn finite inputs into NaN or Inf: every data-free method runs on the inputs
// where divisions by a norm, a weight sum or a sign mass, logs and arccosines go wrong (all
// task vectors zero, all weights zero, task vectors that cancel, one model, tiny values).
#include "method_case.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>

namespace weld {
namespace {

using test::Case;
using test::Vec;

constexpr size_t kRows = 8, kCols = 8, kSize = kRows * kCols;

// A value every Number parameter accepts: its default, else 0.5 moved into its range.
double valid_value(const ParamDef& def) {
	if (def.has_default && !def.required) return def.default_value;
	double value = std::clamp(0.5, def.min_value, def.max_value);
	if (def.min_exclusive && value <= def.min_value) value = def.min_value + 0.5;
	return value;
}

// Parameters for every source (or the globals), or nullopt when the method needs a Text value.
std::optional<ParamValues> parameters(const std::vector<ParamDef>& defs) {
	ParamValues values;
	for (const auto& def : defs) {
		if (def.type == ParamType::Text) {
			if (def.required) return std::nullopt;
			continue;
		}
		if (def.has_default || def.required) values[def.name] = valid_value(def);
	}
	return values;
}

Vec filled(const std::function<float(size_t)>& value) {
	Vec v(kSize);
	for (size_t i = 0; i < kSize; i++)
		v[i] = value(i);
	return v;
}

// Inputs per source count, for a method whose source 0 is the base (or just a model).
std::vector<std::pair<std::string, std::vector<Vec>>> hard_inputs(size_t sources) {
	const Vec base = filled([](size_t i) { return 0.01f * static_cast<float>(i % 7) - 0.03f; });
	const Vec delta = filled([](size_t i) { return (i % 3 == 0 ? 1.0f : -0.5f) * 0.02f; });
	auto add = [](const Vec& a, const Vec& b, float scale) {
		Vec r(a);
		for (size_t i = 0; i < r.size(); i++)
			r[i] += scale * b[i];
		return r;
	};
	std::vector<std::pair<std::string, std::vector<Vec>>> cases;
	cases.push_back({"every model equals the base", std::vector<Vec>(sources, base)});
	cases.push_back({"every model is zero", std::vector<Vec>(sources, Vec(kSize, 0.0f))});
	std::vector<Vec> cancel{base};
	for (size_t s = 1; s < sources; s++)
		cancel.push_back(add(base, delta, s % 2 ? 1.0f : -1.0f));
	cases.push_back({"task vectors that cancel", cancel});
	std::vector<Vec> tiny(sources, filled([](size_t i) { return 1e-30f * static_cast<float>(i % 5); }));
	cases.push_back({"subnormal-scale values", tiny});
	std::vector<Vec> one_changed(sources, base);
	one_changed.back()[3] += 0.5f;
	cases.push_back({"one element changed in one model", one_changed});
	return cases;
}

TEST(FiniteOutputs, NoDataFreeMethodMakesNanOrInfFromFiniteInputs) {
	size_t checked = 0;
	for (const MergeMethod* method : all_methods()) {
		const MethodInfo& info = method->info();
		if (info.learned || !info.statistics.empty()) continue;
		const auto globals = parameters(info.global_params);
		const auto per_model = parameters(info.model_params);
		if (!globals || !per_model) continue;
		size_t sources = std::max<size_t>(3, info.min_sources);
		if (info.max_sources) sources = std::min(sources, info.max_sources);
		for (auto zero_weights : {false, true}) {
			ParamValues model_params = *per_model;
			if (zero_weights && !model_params.count("weight")) continue;
			if (zero_weights) model_params["weight"] = 0.0;
			for (const auto& [what, inputs] : hard_inputs(sources)) {
				Case c{.sources = inputs,
				       .base_index = info.base == BaseModel::Ignored ? -1 : 0,
				       .params = *globals,
				       .source_params = std::vector<ParamValues>(sources, model_params),
				       .shape = {kRows, kCols},
				       .seed = 7};
				Vec out;
				try {
					out = test::run(info.name, c);
				} catch (const Error&) {
					continue; // refusing an input with a clear error is allowed
				}
				const auto bad = std::find_if(out.begin(), out.end(), [](float v) { return !std::isfinite(v); });
				EXPECT_EQ(bad, out.end()) << info.name << " on " << what << (zero_weights ? ", weights 0" : "")
				                          << ": element " << (bad - out.begin()) << " is " << *bad;
			}
		}
		checked++;
	}
	EXPECT_GE(checked, 25u) << "methods checked";
}

} // namespace
} // namespace weld
