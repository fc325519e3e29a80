#include "cli/statistics_cache.h"

#include "cli/torch_program.h"
#include "io/model.h"
#include "io/output_folder.h"
#include "methods/method.h"
#include "util/error.h"

#include <fmt/format.h>

#include <functional>

namespace weld::cli {
namespace fs = std::filesystem;

namespace {

fs::path cache_folder(const fs::path& out, const fs::path& model, const fs::path& data, const std::string& kind) {
	std::error_code ec;
	const auto file = fs::canonical(data, ec);
	if (ec || !fs::is_regular_file(file))
		throw Error(fmt::format("recipe: data file {} of model {} does not exist", quote_for_message(data.string()),
		                        quote_for_message(model.string())));
	const auto stamp = fs::last_write_time(file).time_since_epoch().count();
	const auto key = std::hash<std::string>{}(fmt::format("{}\n{}\n{}\n{}\n{}", fs::absolute(model).string(),
	                                                      file.string(), fs::file_size(file), stamp, kind));
	const auto absolute = fs::absolute(out);
	return absolute.parent_path() / fmt::format(".{}.weld-stats", absolute.filename().string()) /
	       fmt::format("{:016x}.{}", key, kind);
}

} // namespace

ComputedStatistics compute_recipe_statistics(const std::string& recipe_path, const fs::path& out, bool quiet) {
	const auto recipe = parse_recipe(read_text_file(recipe_path), recipe_path);
	const auto* method = find_method(recipe.merge_method);
	if (!method || (method->info().statistics != "fisher" && method->info().statistics != "gram")) return {};
	const auto& kind = method->info().statistics;
	std::vector<const SourceSpec*> sources;
	for (const auto& m : recipe.models)
		sources.push_back(&m);
	for (const auto& slice : recipe.slices)
		for (const auto& s : slice.sources)
			sources.push_back(&s);
	for (const auto& module : recipe.modules) {
		for (const auto& m : module.models)
			sources.push_back(&m);
		for (const auto& slice : module.slices)
			for (const auto& s : slice.sources)
				sources.push_back(&s);
	}
	ComputedStatistics computed;
	for (const auto* source : sources) {
		const auto where = fmt::format("model '{}'", source->model);
		const auto data = text_setting(source->parameters, "data", where);
		if (!data || text_setting(source->parameters, "stats", where) || computed.count(source->model)) continue;
		const auto model = resolve_model_reference(source->model);
		const auto folder = cache_folder(out, model, *data, kind);
		if (!fs::exists(folder)) {
			fs::create_directories(folder.parent_path());
			if (!quiet) fmt::print(stderr, "weld: computing {} statistics of {} on {}\n", kind, source->model, *data);
			run_torch_program_and_wait("stats",
			                           {model.string(), "--data", *data, "--kind", kind, "-o", folder.string()});
		}
		computed[source->model] = folder.string();
	}
	return computed;
}

} // namespace weld::cli
