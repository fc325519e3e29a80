#include "learned/zipit.h"

#include "align/permutation.h"
#include "io/model.h"
#include "io/output_folder.h"
#include "nn/align_activation.h"
#include "stats/statistics.h"
#include "util/error.h"

#include <fmt/format.h>

#include <cstdio>

namespace weld::learned {
namespace fs = std::filesystem;

std::string run_zipit(const Recipe& recipe, const ZipitOptions& zipit, const LearnedMergeOptions& options) {
	if (recipe.models.size() < 2)
		throw Error(fmt::format("recipe: zipit merges two or more models; {} has {}", options.recipe.string(),
		                        recipe.models.size()));
	double total = 0;
	for (double w : zipit.weights)
		total += w;
	if (!(total > 0)) throw Error("recipe: zipit: the models' weights must sum to more than 0");
	std::vector<fs::path> dirs;
	std::vector<LlamaShape> shapes;
	for (const auto& m : recipe.models) {
		dirs.push_back(resolve_model_reference(m.model));
		shapes.push_back(read_llama_shape(ModelFolder(dirs.back()), m.model));
		check_same_shape(shapes.front(), recipe.models.front().model, shapes.back(), m.model);
	}
	auto ref = nn::LlamaModel::load(dirs.front(), at::kFloat);
	const auto sequences = nn::read_alignment_sequences(zipit.data, dirs.front(), ref.config(), zipit.samples,
	                                                    nn::min_alignment_tokens(shapes.front()));
	std::map<std::string, at::Tensor> sum;
	for (const auto& [name, t] : ref.parameters())
		sum[name] = t.detach().to(at::kDouble) * (zipit.weights[0] / total);
	for (size_t i = 1; i < dirs.size(); ++i) {
		auto model = nn::LlamaModel::load(dirs[i], at::kFloat);
		const auto match = nn::match_activations(ref, model, sequences, zipit.absval);
		nn::permute_model(model, shapes[i], match.permutation);
		if (!options.quiet)
			std::fprintf(stderr, "weld: zipit %s: mean matched correlation: residual %.3f -> %.3f, MLP %.3f -> %.3f\n",
			             recipe.models[i].model.c_str(), match.residual_before, match.residual_after, match.mlp_before,
			             match.mlp_after);
		for (const auto& [name, t] : model.parameters())
			sum.at(name) += t.detach().to(at::kDouble) * (zipit.weights[i] / total);
	}
	std::map<std::string, at::Tensor> merged;
	for (const auto& [name, t] : sum)
		merged[name] = t.to(at::kFloat);
	ref.replace_parameters(merged);
	const auto text =
	    fmt::format("# Merged by weld's zipit from {}: units matched on {} (sha256 {}), {} "
	                "sequences\n",
	                options.recipe.string(), zipit.data.string(), stats::file_sha256(zipit.data), sequences.size()) +
	    recipe.text;
	OutputFolder out(options.out, options.force);
	ref.save(out.path());
	write_text_file(out.path() / "weld_recipe.yml", text);
	out.publish();
	return text;
}

} // namespace weld::learned
