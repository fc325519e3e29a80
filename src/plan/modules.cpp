#include "plan/modules.h"

#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace weld {
namespace {

struct KnownArchitecture {
	std::string_view architecture;
	std::vector<PlanModule> modules;
};

// The multimodal architectures of mergekit's _data/architectures with a weight_prefix per module
// (gemma3vl, llama4, mistral3, whisper).
const std::vector<KnownArchitecture>& known_architectures() {
	static const std::vector<KnownArchitecture> known = {
	    {"Gemma3ForConditionalGeneration",
	     {{"text_decoder", "language_model.", "text_config.num_hidden_layers"},
	      {"multi_modal_projector", "multi_modal_projector.", ""},
	      {"vision_tower", "vision_tower.vision_model.", "vision_config.num_hidden_layers"}}},
	    {"Llama4ForConditionalGeneration",
	     {{"text_decoder", "language_model.", "text_config.num_hidden_layers"},
	      {"multi_modal_projector", "multi_modal_projector.", ""},
	      {"vision_model", "vision_model.", "vision_config.num_hidden_layers"}}},
	    {"Mistral3ForConditionalGeneration",
	     {{"text_decoder", "language_model.", "text_config.num_hidden_layers"},
	      {"multi_modal_projector", "multi_modal_projector.", ""},
	      {"vision_tower", "vision_tower.", "vision_config.num_hidden_layers"}}},
	    {"WhisperForConditionalGeneration",
	     {{"decoder", "model.decoder.", "decoder_layers"}, {"encoder", "model.encoder.", "encoder_layers"}}},
	};
	return known;
}

const KnownArchitecture* find_known(const ModelFolder& model) {
	if (!model.config()) return nullptr;
	for (const auto& known : known_architectures())
		if (known.architecture == model.config()->architecture) return &known;
	return nullptr;
}

} // namespace

ModuleMap::ModuleMap(const ModelFolder& model, const std::string& reference, const std::vector<ModuleSpec>& specs) {
	const KnownArchitecture* known = find_known(model);
	if (known) modules_ = known->modules;
	for (size_t i = 0; i < specs.size(); ++i) {
		const auto& name = specs[i].name;
		auto it = std::find_if(modules_.begin(), modules_.end(), [&](const PlanModule& m) { return m.name == name; });
		if (known && it == modules_.end()) {
			std::vector<std::string> names;
			for (const auto& m : modules_)
				names.push_back(m.name);
			throw Error(fmt::format("recipe: modules.{}: {} has no module '{}' (modules: {})", name,
			                        known->architecture, name, fmt::join(names, ", ")));
		}
		if (!known) {
			modules_.push_back(
			    {name, name == "default" ? "" : name + ".", name == "default" ? "num_hidden_layers" : ""});
			it = modules_.end() - 1;
		}
		it->spec = static_cast<int>(i);
		by_spec_.push_back(static_cast<size_t>(it - modules_.begin()));
	}
	std::vector<size_t> owned(modules_.size(), 0);
	for (const auto& tensor : model.tensors()) {
		const auto& name = tensor.info->name;
		const int m = owner(name);
		if (m < 0 || modules_[static_cast<size_t>(m)].spec < 0)
			throw Error(fmt::format("recipe: modules: tensor '{}' of model '{}' belongs to no module of the recipe{} "
			                        "(mergekit would leave it out of the output; add its module, or `default` for "
			                        "every remaining tensor)",
			                        name, reference,
			                        m < 0 ? "" : fmt::format(" (it is in module '{}')", modules_[size_t(m)].name)));
		owned[static_cast<size_t>(m)]++;
	}
	for (size_t i = 0; i < specs.size(); ++i)
		if (owned[by_spec_[i]] == 0)
			throw Error(fmt::format("recipe: modules.{}: no tensor of model '{}' is in this module (tensor names "
			                        "starting with '{}')",
			                        specs[i].name, reference, modules_[by_spec_[i]].prefix));
}

int ModuleMap::owner(std::string_view tensor) const {
	int best = -1;
	for (size_t i = 0; i < modules_.size(); ++i) {
		const auto& prefix = modules_[i].prefix;
		if (tensor.starts_with(prefix) &&
		    (best < 0 || prefix.size() > modules_[static_cast<size_t>(best)].prefix.size()))
			best = static_cast<int>(i);
	}
	return best;
}

} // namespace weld
