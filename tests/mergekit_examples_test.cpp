// Runs mergekit's own example recipes unchanged: those in $WELD_MERGEKIT_EXAMPLES, else in the
// shared folder beside the repository (../shared/recipes/mergekit-examples); skipped when neither
// exists (a clone without the shared folder). Every model a recipe names is created as a tiny Llama-shaped model with
// the real layer count (40 for 13B models, 32 for 7B ones) in a temporary Hugging Face cache.
#include "exec/merge.h"
#include "plan/recipe.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <set>

namespace weld {
namespace {

namespace fs = std::filesystem;

void add_to_cache(const fs::path& hub, const std::string& repo_id, uint64_t seed) {
	std::string folder = "models--" + repo_id;
	for (size_t pos; (pos = folder.find('/')) != std::string::npos;)
		folder.replace(pos, 1, "--");
	const auto snapshot = hub / folder / "snapshots" / "0000000000000000000000000000000000000000";
	if (fs::exists(snapshot)) return;
	std::string lower = repo_id;
	std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
	TinyLlamaSpec spec;
	spec.layers = lower.find("13b") != std::string::npos ? 40 : 32;
	spec.dtype = DType::BF16;
	write_tiny_llama(snapshot, spec, perturb(make_tiny_llama(spec, 1), 0.02f, seed), 40'000);
	fs::create_directories(hub / folder / "refs");
	test::write_file(hub / folder / "refs" / "main", "0000000000000000000000000000000000000000");
}

TEST(MergekitExamples, RunUnchanged) {
	const char* from_env = std::getenv("WELD_MERGEKIT_EXAMPLES");
	const fs::path examples =
	    from_env ? fs::path(from_env) : fs::path(WELD_SOURCE_DIR) / ".." / "shared" / "recipes" / "mergekit-examples";
	if (!fs::is_directory(examples))
		GTEST_SKIP() << examples << " does not exist: set WELD_MERGEKIT_EXAMPLES to mergekit's examples folder";
	test::TempDir dir;
	setenv("HF_HUB_CACHE", (dir / "hub").c_str(), 1);
	size_t ran = 0;
	for (const auto& entry : fs::directory_iterator(examples)) {
		if (entry.path().extension() != ".yml") continue;
		const auto recipe = parse_recipe(test::read_file(entry.path()), entry.path().string());
		std::set<std::string> names;
		if (recipe.base_model) names.insert(*recipe.base_model);
		for (const auto& m : recipe.models)
			names.insert(m.model);
		for (const auto& s : recipe.slices)
			for (const auto& src : s.sources)
				names.insert(src.model);
		uint64_t seed = 1;
		for (const auto& name : names)
			add_to_cache(dir / "hub", name, seed++);

		MergeOptions options;
		options.recipe_path = entry.path();
		options.out_dir = dir / entry.path().stem().string();
		options.exec.threads = 2;
		EXPECT_NO_THROW(run_merge(options)) << entry.path();
		EXPECT_TRUE(fs::exists(options.out_dir / "config.json")) << entry.path();
		ran++;
	}
	unsetenv("HF_HUB_CACHE");
	EXPECT_GE(ran, 6u);
}

} // namespace
} // namespace weld
