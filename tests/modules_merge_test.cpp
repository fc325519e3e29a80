// End-to-end merges with mergekit's `modules:` on a tiny two-module model (a Mistral3-style text
// decoder, vision tower and projector), each module's output checked against its own recipe;
// bad module recipes; int8_mask, which changes no byte; and cabs' pruning_order, which the plan
// turns into each model's place.
#include "family_fixture.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace weld {
namespace {

namespace fs = std::filesystem;
using test::Tensors;

class ModulesMergeTest : public ::testing::Test, protected test::Family {
protected:
	// A Mistral3ForConditionalGeneration-shaped model: the tiny Llama under "language_model.",
	// a two-layer vision tower and a projector, values drawn from seed.
	Tensors write_multimodal(const std::string& name, uint64_t seed) {
		spec_.layers = 2;
		auto tensors = make_tiny_llama(spec_, seed);
		for (auto& t : tensors)
			t.name = "language_model." + t.name;
		auto add = [&](std::string tensor, std::vector<uint64_t> shape) {
			size_t n = 1;
			for (auto d : shape)
				n *= d;
			std::vector<float> values(n);
			for (size_t j = 0; j < n; ++j)
				values[j] = static_cast<float>(std::sin(0.37 * static_cast<double>(j + 1) * static_cast<double>(seed)));
			tensors.push_back({std::move(tensor), std::move(shape), std::move(values)});
		};
		for (int layer = 0; layer < 2; ++layer)
			add("vision_tower.transformer.layers." + std::to_string(layer) + ".attention.q_proj.weight", {8, 8});
		add("vision_tower.ln_pre.weight", {8});
		add("multi_modal_projector.linear_1.weight", {16, 8});
		write_tiny_llama(dir_ / name, spec_, tensors);
		const nlohmann::ordered_json config = {{"architectures", {"Mistral3ForConditionalGeneration"}},
		                                       {"model_type", "mistral3"},
		                                       {"text_config", {{"num_hidden_layers", 2}, {"hidden_size", 16}}},
		                                       {"vision_config", {{"num_hidden_layers", 2}}}};
		test::write_file(dir_ / name / "config.json", config.dump(2));
		return test::as_map(tensors);
	}
};

// text_decoder: linear with a module-level weight 0.5 (over the recipe's 1.0) and b's own 1.5; vision_tower: layer 1 of
// b alone (renumbered to layer 0); projector: a alone. config.json counts the layers per module.
TEST_F(ModulesMergeTest, EachModuleFollowsItsOwnRecipe) {
	const Tensors a = write_multimodal("a", 3), b = write_multimodal("b", 5);
	const Tensors out = merged("merge_method: linear\n"
	                           "parameters: {weight: 1.0}\n"
	                           "modules:\n"
	                           "  text_decoder:\n"
	                           "    parameters: {weight: 0.5}\n"
	                           "    models:\n"
	                           "      - model: a\n"
	                           "      - model: b\n"
	                           "        parameters: {weight: 1.5}\n"
	                           "  vision_tower:\n"
	                           "    slices:\n"
	                           "      - sources:\n"
	                           "          - model: b\n"
	                           "            layer_range: [1, 2]\n"
	                           "  multi_modal_projector:\n"
	                           "    models:\n"
	                           "      - model: a\n");
	size_t text = 0;
	for (const auto& [name, values] : a) {
		if (!name.starts_with("language_model.")) continue;
		++text;
		for (size_t i = 0; i < values.size(); i += 3)
			expect_near(out, name, i, (0.5 * values[i] + 1.5 * b.at(name)[i]) / 2.0);
	}
	EXPECT_EQ(text, 2u * 9 + 3);
	EXPECT_EQ(out.at("vision_tower.transformer.layers.0.attention.q_proj.weight"),
	          b.at("vision_tower.transformer.layers.1.attention.q_proj.weight"));
	EXPECT_FALSE(out.count("vision_tower.transformer.layers.1.attention.q_proj.weight"));
	EXPECT_EQ(out.at("vision_tower.ln_pre.weight"), b.at("vision_tower.ln_pre.weight"));
	EXPECT_EQ(out.at("multi_modal_projector.linear_1.weight"), a.at("multi_modal_projector.linear_1.weight"));
	EXPECT_EQ(out.size(), text + 2 + 1);
	const auto config = nlohmann::json::parse(test::read_file(dir_ / "out" / "config.json"));
	EXPECT_EQ(config["text_config"]["num_hidden_layers"], 2);
	EXPECT_EQ(config["vision_config"]["num_hidden_layers"], 1);
}

TEST_F(ModulesMergeTest, BadModuleRecipesAreOneClearErrorAndWriteNothing) {
	write_multimodal("a", 3);
	const std::string projector = "  multi_modal_projector:\n    models: [{model: a}]\n";
	const std::string text = "  text_decoder:\n    models: [{model: a}]\n";
	const std::string vision = "  vision_tower:\n    models: [{model: a}]\n";
	const std::pair<std::string, std::vector<std::string>> cases[] = {
	    {"modules:\n" + text + vision + "  audio_tower:\n    models: [{model: a}]\n" + projector,
	     {"modules.audio_tower", "Mistral3ForConditionalGeneration has no module 'audio_tower'", "vision_tower"}},
	    {"modules:\n" + text + vision,
	     {"tensor 'multi_modal_projector.linear_1.weight'", "belongs to no module", "multi_modal_projector"}},
	    {"modules:\n  text_decoder:\n    models: [{model: a}]\n    slices: [{sources: [{model: a, layer_range: [0, "
	     "1]}]}]\n" +
	         vision + projector,
	     {"modules.text_decoder", "either 'models' or 'slices'"}},
	    {"models: [{model: a}]\nmodules:\n" + text, {"exactly one of 'models', 'slices' or 'modules'"}},
	    {"modules:\n  text_decoder:\n    models: [{model: a}]\n    density: 0.5\n" + vision + projector,
	     {"modules.text_decoder", "unknown key 'density'"}},
	};
	for (const auto& [modules, words] : cases) {
		const auto error = merge_error("merge_method: linear\n" + modules);
		for (const auto& w : words)
			EXPECT_NE(error.find(w), std::string::npos) << w << " not in: " << error;
		EXPECT_FALSE(fs::exists(dir_ / "failed"));
	}
}

// On a model without mergekit modules, `default` is the whole model: same bytes as `models:`.
TEST_F(ModulesMergeTest, DefaultModuleIsTheWholeModel) {
	make_family(DType::BF16, 2, 2);
	const std::string models =
	    "  - model: a\n    parameters: {weight: 1.0}\n  - model: b\n    parameters: {weight: 2.0}\n";
	merge("merge_method: ties\nbase_model: base\nmodels:\n" + models, "plain");
	std::string indented;
	for (size_t start = 0, end; start < models.size(); start = end + 1) {
		end = models.find('\n', start);
		indented += "    " + models.substr(start, end - start + 1);
	}
	merge("merge_method: ties\nbase_model: base\nmodules:\n  default:\n    models:\n" + indented, "modules");
	EXPECT_EQ(test::read_file(dir_ / "plain" / "model.safetensors"),
	          test::read_file(dir_ / "modules" / "model.safetensors"));
	EXPECT_NE(merge_error("merge_method: ties\nbase_model: base\nmodules:\n  default:\n    models:\n" + indented +
	                      "  vision:\n    models:\n" + indented)
	              .find("modules.vision: no tensor of model"),
	          std::string::npos);
}

// int8_mask is a memory option in mergekit: its masks hold -1/0/1 (or 0/1), exact in int8 and in
// the model's dtype alike, so it changes no value there; weld keeps no mask tensors. Same bytes.
TEST_F(ModulesMergeTest, Int8MaskChangesNoByte) {
	make_family(DType::BF16, 2, 2);
	for (const std::string method : {"ties", "dare_ties", "breadcrumbs_ties", "della", "sce"}) {
		const bool per_model = method != "sce";
		const std::string models =
		    per_model ? "models:\n  - model: a\n    parameters: {weight: 1.0, density: 0.5}\n  - model: b\n"
		                "    parameters: {weight: 0.7, density: 0.5}\n"
		              : "models: [{model: a}, {model: b}]\n";
		const std::string head = "merge_method: " + method + "\nbase_model: base\n" + models;
		merge(head + "parameters: {int8_mask: false}\n", "plain", 2, 5);
		merge(head + "parameters: {int8_mask: true}\n", "int8", 2, 5);
		EXPECT_EQ(test::read_file(dir_ / "plain" / "model.safetensors"),
		          test::read_file(dir_ / "int8" / "model.safetensors"))
		    << method;
	}
}

// With n = m every position goes to the first model in the order: the output is that model.
// Without pruning_order the references sorted by name decide (a before b).
TEST_F(ModulesMergeTest, CabsPruningOrderComesFromTheRecipe) {
	make_family(DType::F32, 2, 2);
	const std::string head = "merge_method: cabs\nbase_model: base\nparameters: {default_n_val: 4, default_m_val: 4";
	const std::string models = "models: [{model: b}, {model: a}]\n";
	EXPECT_EQ(merged(head + "}\n" + models), a_);
	EXPECT_EQ(merged(head + ", pruning_order: [b, a]}\n" + models), b_);
	EXPECT_EQ(merged(head + ", pruning_order: [base, b]}\n" + models), b_);
	EXPECT_NE(merge_error(head + ", pruning_order: [b, c]}\n" + models)
	              .find("parameters.pruning_order: 'c' is not a model of the recipe"),
	          std::string::npos);
}

} // namespace
} // namespace weld
