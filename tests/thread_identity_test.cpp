// Reproducibility: every data-free method gives the same bytes for any thread count and memory
// budget (streamed in blocks or merged whole), with the same --seed. The MPI half (any rank
// count) is tests/mpi_merge_test.
#include "methods/methods.h"
#include "test_util.h"
#include "testing/tiny_llama.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>

namespace weld {
namespace {

// A value every Number parameter accepts: its default, else 0.5 moved into its range.
double valid_value(const ParamDef& def) {
	if (def.has_default && !def.required) return def.default_value;
	double value = std::clamp(0.5, def.min_value, def.max_value);
	if (def.min_exclusive && value <= def.min_value) value = def.min_value + 0.5;
	return value;
}

// `{name: value, ...}` for the Number parameters that are required, mwa's loss, and density set
// below 1 so that the methods that draw random numbers draw them.
std::string yaml_parameters(const std::vector<ParamDef>& defs) {
	std::string out;
	for (const auto& def : defs) {
		if (def.type != ParamType::Number) continue;
		double value = valid_value(def);
		if (def.name == "density" && value >= 1) value = 0.5;
		if (!def.required && def.name != "density" && def.name != "loss") continue; // mwa weighs by loss
		out += fmt::format("{}{}: {}", out.empty() ? "" : ", ", def.name, value);
	}
	return "{" + out + "}";
}

bool needs_text(const std::vector<ParamDef>& defs) {
	return std::any_of(defs.begin(), defs.end(),
	                   [](const ParamDef& d) { return d.type == ParamType::Text && d.required; });
}

TEST(ThreadIdentity, EveryDataFreeMethodGivesTheSameBytesOnAnyThreadCountAndBudget) {
	test::TempDir dir;
	TinyLlamaSpec spec;
	spec.layers = 1;
	spec.hidden = 64;
	spec.intermediate = 512; // 32768-element MLP matrices: two streaming blocks each
	spec.vocab = 128;
	spec.heads = 4;
	spec.kv_heads = 2;
	const auto base = make_tiny_llama(spec, 1);
	write_tiny_llama(dir / "base", spec, base);
	write_tiny_llama(dir / "a", spec, perturb(base, 0.02f, 2));
	write_tiny_llama(dir / "b", spec, perturb(base, 0.02f, 3));
	size_t checked = 0;
	for (const MergeMethod* method : all_methods()) {
		const MethodInfo& info = method->info();
		if (info.learned || !info.statistics.empty() || needs_text(info.global_params) || needs_text(info.model_params))
			continue;
		SCOPED_TRACE(info.name);
		const bool with_base = info.base != BaseModel::Ignored;
		std::vector<std::string> models = {"a", "b"};
		const size_t limit = info.max_sources == 0 ? 3 : info.max_sources;
		while (models.size() + (with_base ? 1 : 0) > limit)
			models.pop_back();
		if (models.size() + (with_base ? 1 : 0) < info.min_sources) continue;
		std::string recipe = fmt::format("merge_method: {}\n", info.name);
		if (with_base) recipe += fmt::format("base_model: {}\n", (dir / "base").string());
		recipe += fmt::format("parameters: {}\nmodels:\n", yaml_parameters(info.global_params));
		for (const auto& m : models)
			recipe += fmt::format("  - model: {}\n    parameters: {}\n", (dir / m).string(),
			                      yaml_parameters(info.model_params));
		const auto file = dir / (info.name + ".yml");
		test::write_file(file, recipe);
		std::vector<std::string> outputs;
		for (const auto& options : {"--threads 1", "--threads 2", "--threads 2 --memory-budget 64KB"}) {
			const auto out = dir / fmt::format("{}-{}", info.name, outputs.size());
			std::string err;
			ASSERT_EQ(test::run_weld(
			              fmt::format("merge {} {} --seed 7 --quiet {}", file.string(), out.string(), options), &err),
			          0)
			    << recipe << err;
			outputs.push_back(test::read_file(out / "model.safetensors"));
		}
		EXPECT_EQ(outputs[0], outputs[1]) << "--threads 1 vs 2";
		EXPECT_EQ(outputs[0], outputs[2]) << "--threads 1 vs 2 with a 64KB budget";
		checked++;
	}
	std::printf("methods checked: %zu\n", checked);
	EXPECT_GE(checked, 30u);
}

} // namespace
} // namespace weld
