// weld analyze: its statistics against values worked out by hand and against NumPy, its report
// opened in headless Chromium; and the progress lines of the long commands.
#include "analyze/statistics.h"
#include "family_fixture.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <png.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <regex>
#include <set>

namespace weld {
namespace {

namespace fs = std::filesystem;

// base [[1, 2], [3, 4]]; τ_a = [[1, 0], [-2, 0]] (rank 1), τ_b = [[1, -1], [2, 0]].
TEST(AnalyzeStatistics, TinyTensorByHand) {
	const std::vector<float> base = {1, 2, 3, 4}, a = {2, 2, 1, 4}, b = {2, 1, 5, 4};
	const auto t = analyze::analyze_tensor("model.layers.3.mlp.up_proj.weight", {2, 2}, base, {a, b});
	EXPECT_EQ(t.place.layer, 3);
	EXPECT_EQ(t.place.module, "up_proj");
	const auto& s = t.sums;
	EXPECT_NEAR(s.relative_norm(0), std::sqrt(5.0 / 30.0), 1e-12);
	EXPECT_NEAR(s.relative_norm(1), std::sqrt(6.0 / 30.0), 1e-12);
	EXPECT_NEAR(s.cosine(0, 1), -3 / std::sqrt(30.0), 1e-12);
	EXPECT_NEAR(s.cosine(1, 1), 1, 1e-12);
	// Entry 2 has +2 against -2; entry 1 has one nonzero entry only: no conflict.
	EXPECT_NEAR(s.sign_conflict_rate(), 0.25, 1e-12);
	// Σ τ = [2, -1, 0, 0]: both entries 2 lose the election (sign 0), 4 of Σ|τ| = 7.
	EXPECT_NEAR(s.election_drop_rate(), 4.0 / 7.0, 1e-12);
	// k = max(1, ⌊0.4⌋) = 1: both keep entry 2.
	EXPECT_NEAR(s.top_k_jaccard(0, 1), 1, 1e-12);
	EXPECT_EQ(t.kept_rank, 1u);
	EXPECT_NEAR(s.mean_effective_rank(0), 1, 1e-9);
	// τ_b τ_bᵀ = [[2, 2], [2, 4]]: σ² = 3 ± √5.
	const double s1 = std::sqrt(3 + std::sqrt(5.0)), s2 = std::sqrt(3 - std::sqrt(5.0));
	const double p1 = s1 / (s1 + s2), p2 = s2 / (s1 + s2);
	EXPECT_NEAR(s.mean_effective_rank(1), std::exp(-p1 * std::log(p1) - p2 * std::log(p2)), 1e-9);
	EXPECT_NEAR(s.mean_top_rank_energy(1), (3 + std::sqrt(5.0)) / 6, 1e-9);
	EXPECT_NEAR(s.mean_top_rank_energy(0), 1, 1e-9);
}

TEST(AnalyzeStatistics, PlacesOfTensorNames) {
	EXPECT_EQ(analyze::place_of("model.embed_tokens.weight").layer, -1);
	EXPECT_EQ(analyze::place_of("model.embed_tokens.weight").module, "embed_tokens");
	EXPECT_EQ(analyze::place_of("model.layers.12.self_attn.q_proj.bias").layer, 12);
	EXPECT_EQ(analyze::place_of("model.layers.12.self_attn.q_proj.bias").module, "q_proj");
	EXPECT_EQ(analyze::place_of("transformer.h.0.attn.c_attn.weight").layer, 0);
}

// Runs a shell command; returns its exit status and its stdout.
int run_shell(const std::string& command, std::string* out = nullptr) {
	test::TempDir capture;
	const auto file = capture / "out.txt";
	const int status = std::system((command + " >" + file.string() + " 2>&1").c_str());
	if (out) *out = test::read_file(file);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool has_numpy() {
	return fs::exists("/usr/bin/python3") && run_shell("/usr/bin/python3 -c 'import numpy'") == 0;
}

std::vector<std::string> lines_of(const std::string& text) {
	std::vector<std::string> lines;
	std::string line;
	for (char c : text) {
		if (c != '\n') {
			line += c;
			continue;
		}
		lines.push_back(line);
		line.clear();
	}
	if (!line.empty()) lines.push_back(line);
	return lines;
}

class AnalyzeTest : public ::testing::Test, protected test::Family {
protected:
	void SetUp() override { make_family(DType::F32, 2, 3); }

	std::string path(const std::string& name) const { return (dir_ / name).string(); }
	std::string family() const { return path("base") + " " + path("a") + " " + path("b") + " " + path("c"); }

	// A TIES recipe over the family: weights 1, 0.5, 2, density 0.2.
	std::string ties_recipe() {
		const auto file = dir_ / "ties.yml";
		test::write_file(file, fmt::format("merge_method: ties\nbase_model: {0}\ndtype: float32\nmodels:\n"
		                                   "  - model: {1}\n    parameters: {{weight: 1, density: 0.2}}\n"
		                                   "  - model: {2}\n    parameters: {{weight: 0.5, density: 0.2}}\n"
		                                   "  - model: {3}\n    parameters: {{weight: 2, density: 0.2}}\n",
		                                   path("base"), path("a"), path("b"), path("c")));
		return file.string();
	}

	size_t tensor_count() const { return ModelFolder(dir_ / "base").tensors().size(); }
};

TEST_F(AnalyzeTest, SummaryMatchesNumPy) {
	if (!has_numpy()) GTEST_SKIP() << "/usr/bin/python3 with NumPy is not installed (python3-numpy)";
	std::string err;
	ASSERT_EQ(test::run_weld(fmt::format("analyze {} -o {} --recipe {} --threads 2 --quiet", family(), path("report"),
	                                     ties_recipe()),
	                         &err),
	          0)
	    << err;
	EXPECT_EQ(err, "");
	std::string out;
	const int status = run_shell(fmt::format("/usr/bin/python3 {}/tests/analyze_reference.py {} {} {} {} {} "
	                                         "--recipe-ties 0.2 1 0.5 2",
	                                         WELD_SOURCE_DIR, path("report/summary.json"), path("base"), path("a"),
	                                         path("b"), path("c")),
	                             &out);
	EXPECT_EQ(status, 0) << out;
	EXPECT_EQ(out, "ok\n");
}

TEST_F(AnalyzeTest, SmallMemoryBudgetAndOneThreadGiveTheSameSummary) {
	ASSERT_EQ(test::run_weld(fmt::format("analyze {} -o {} -q", family(), path("r1"))), 0);
	ASSERT_EQ(test::run_weld(fmt::format("analyze {} -o {} -q --threads 1 --memory-budget 1KB", family(), path("r2"))),
	          0);
	EXPECT_EQ(test::read_file(dir_ / "r1/summary.json"), test::read_file(dir_ / "r2/summary.json"));
}

TEST_F(AnalyzeTest, BadInputIsOneErrorAndNoReport) {
	std::string err;
	ASSERT_EQ(test::run_weld(fmt::format("analyze {} -o {} -q", family(), path("report"))), 0);
	EXPECT_EQ(test::run_weld(fmt::format("analyze {} -o {} -q", family(), path("report")), &err), 1);
	EXPECT_NE(err.find("exists"), std::string::npos) << err;
	EXPECT_EQ(test::run_weld(fmt::format("analyze {} -o {} -q --force", family(), path("report")), &err), 0) << err;

	TinyLlamaSpec other = spec_;
	other.hidden = 8;
	write_tiny_llama(dir_ / "other", other, make_tiny_llama(other, 3));
	EXPECT_EQ(test::run_weld(fmt::format("analyze {} {} -o {}", family(), path("other"), path("bad")), &err), 1);
	EXPECT_EQ(lines_of(err).size(), 1u) << err;
	EXPECT_NE(err.find("weld: error: " + path("other") +
	                   ": tensor 'model.embed_tokens.weight' has shape [64, 8], the "
	                   "base model's is [64, 16]"),
	          std::string::npos)
	    << err;
	fs::remove(dir_ / "c" / "model.safetensors");
	EXPECT_EQ(test::run_weld(fmt::format("analyze {} -o {}", family(), path("bad")), &err), 1);
	EXPECT_EQ(err.rfind("weld: error: ", 0), 0u) << err;
	for (const auto& entry : fs::directory_iterator(dir_.path()))
		EXPECT_EQ(entry.path().filename().string().find("bad"), std::string::npos) << "left behind: " << entry.path();
}

// Distinct RGB values of a PNG (libpng's simplified API).
size_t distinct_colors(const fs::path& file, png_uint_32* width, png_uint_32* height) {
	png_image image{};
	image.version = PNG_IMAGE_VERSION;
	if (!png_image_begin_read_from_file(&image, file.c_str())) return 0;
	image.format = PNG_FORMAT_RGB;
	std::vector<uint8_t> pixels(PNG_IMAGE_SIZE(image));
	if (!png_image_finish_read(&image, nullptr, pixels.data(), 0, nullptr)) return 0;
	*width = image.width;
	*height = image.height;
	std::set<uint32_t> colors;
	for (size_t i = 0; i + 2 < pixels.size(); i += 3)
		colors.insert(uint32_t{pixels[i]} << 16 | uint32_t{pixels[i + 1]} << 8 | pixels[i + 2]);
	return colors.size();
}

constexpr const char* kChromium = "/usr/bin/chromium";

std::string chromium(const fs::path& profile) {
	return fmt::format("{} --headless --no-sandbox --disable-gpu --user-data-dir={}", kChromium, profile.string());
}

// The report's own page, with a script that records, once everything has loaded, how many
// images it has and which did not load; dumped by Chromium as "images=N broken=a.png,b.png;".
std::string image_check(const fs::path& report, const fs::path& profile) {
	auto html = test::read_file(report / "index.html");
	const auto end = html.rfind("</body>");
	html.insert(end, R"(<script>window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  const p = document.createElement('pre');
  p.textContent = 'images=' + images.length + ' broken=' + broken.join(',') + ';';
  document.body.appendChild(p);
});</script>)");
	test::write_file(report / "image_check.html", html);
	std::string dom;
	run_shell(chromium(profile) + " --dump-dom --virtual-time-budget=10000 file://" +
	              (report / "image_check.html").string(),
	          &dom);
	std::smatch m;
	return std::regex_search(dom, m, std::regex("images=\\d+ broken=[^;]*;")) ? m.str() : "no result in: " + dom;
}

TEST_F(AnalyzeTest, ReportRendersInChromium) {
	if (!fs::exists(kChromium)) GTEST_SKIP() << kChromium << " is not installed (scripts/install-clients installs it)";
	std::string err;
	ASSERT_EQ(
	    test::run_weld(fmt::format("analyze {} -o {} --recipe {} -q", family(), path("report"), ties_recipe()), &err),
	    0)
	    << err;
	const auto report = dir_ / "report";
	size_t pngs = 0;
	for (const auto& entry : fs::directory_iterator(report))
		pngs += entry.path().extension() == ".png";
	ASSERT_GE(pngs, 8u); // norms, cosine (+2 layers), sign conflicts, rank, energy, overlap (+layers), recipe

	std::string log;
	const auto shot = dir_ / "shot.png";
	run_shell(fmt::format("{} --screenshot={} --window-size=1200,1600 file://{}", chromium(dir_ / "profile"),
	                      shot.string(), (report / "index.html").string()),
	          &log);
	png_uint_32 width = 0, height = 0;
	const size_t colors = distinct_colors(shot, &width, &height);
	EXPECT_EQ(width, 1200u) << log;
	EXPECT_EQ(height, 1600u) << log;
	EXPECT_GE(colors, 100u) << "the screenshot looks blank: " << log;

	EXPECT_EQ(image_check(report, dir_ / "profile"), fmt::format("images={} broken=;", pngs));
	// The check fails when a plot is missing.
	fs::remove(report / "cosine_layer_1.png");
	EXPECT_EQ(image_check(report, dir_ / "profile"), fmt::format("images={} broken=cosine_layer_1.png;", pngs));
}

// Every line of stderr a progress line of `label`; the last one all done.
void expect_progress_lines(const std::string& err, const std::string& label, const std::string& unit, size_t total) {
	const auto lines = lines_of(err);
	ASSERT_FALSE(lines.empty()) << "no progress lines for " << label;
	const std::regex line("weld: " + label + ": (\\d+)/(\\d+) " + unit + " \\((\\d+)%\\)(, [^,]+/s)?(, ETA .*| in .*)");
	for (const auto& l : lines) {
		std::smatch m;
		ASSERT_TRUE(std::regex_match(l, m, line)) << "not a progress line: '" << l << "' in\n" << err;
		EXPECT_EQ(std::stoul(m[2]), total) << l;
		// Rounded as the progress line rounds it (6/21 is 29%); lines between 0% and 100% appear
		// only when the run is slow enough for a tick to land there.
		EXPECT_EQ(m[3].str(),
		          fmt::format("{:.0f}", 100.0 * static_cast<double>(std::stoul(m[1])) / static_cast<double>(total)))
		    << l;
	}
	EXPECT_NE(lines.back().find(fmt::format("{0}/{0} {1} (100%)", total, unit)), std::string::npos) << err;
	EXPECT_NE(lines.back().find(" in "), std::string::npos) << err;
}

TEST_F(AnalyzeTest, MergeAndAnalyzeProgressIsPlainLinesOffATerminalAndSilentWhenQuiet) {
	std::string err;
	ASSERT_EQ(test::run_weld(fmt::format("merge {} {}", ties_recipe(), path("merged")), &err), 0) << err;
	expect_progress_lines(err, "merge", "tensors", tensor_count());
	ASSERT_EQ(test::run_weld(fmt::format("merge {} {} --quiet", ties_recipe(), path("merged2")), &err), 0) << err;
	EXPECT_EQ(err, "");

	ASSERT_EQ(test::run_weld(fmt::format("analyze {} -o {}", family(), path("report")), &err), 0) << err;
	expect_progress_lines(err, "analyze", "tensors", tensor_count());
	std::string out;
	ASSERT_EQ(test::run_weld(fmt::format("analyze {} -o {} --quiet", family(), path("report2")), &err, &out), 0);
	EXPECT_EQ(err, "");
	EXPECT_EQ(out, "");
}

// eval, stats and train run in weld-torch, built only with libtorch.
TEST_F(AnalyzeTest, TorchCommandsProgressIsPlainLinesOffATerminalAndSilentWhenQuiet) {
	if (!fs::exists(fs::path(WELD_BINARY).parent_path() / "weld-torch"))
		GTEST_SKIP() << "weld was built without libtorch: no eval, stats or train";
	// Token ids: the tiny family's vocabulary (64) holds no byte tokens.
	test::write_file(dir_ / "ids.jsonl", "{\"input_ids\": [1, 5, 9, 3, 7]}\n{\"input_ids\": [2, 4, 6, 8]}\n"
	                                     "{\"input_ids\": [10, 11, 12, 13, 14, 15]}\n");
	const auto text = path("ids.jsonl");
	const std::vector<std::tuple<std::string, std::string, std::string, size_t>> commands = {
	    {"eval " + path("base") + " --data " + text, "eval", "sequences", 3},
	    {"train " + path("trained") + " --init " + path("base") + " --data " + text + " --steps 3 --batch 2", "train",
	     "steps", 3},
	};
	for (const auto& [args, label, unit, total] : commands) {
		std::string err;
		ASSERT_EQ(test::run_weld(args, &err), 0) << args << "\n" << err;
		expect_progress_lines(err, label, unit, total);
		fs::remove_all(dir_ / "trained");
		ASSERT_EQ(test::run_weld(args + " --quiet", &err), 0) << args << "\n" << err;
		EXPECT_EQ(err, "") << args;
	}
	std::string err;
	const auto stats = "stats " + path("base") + " --data " + text + " --kind fisher -o " + path("stats");
	ASSERT_EQ(test::run_weld(stats, &err), 0) << err;
	ASSERT_FALSE(lines_of(err).empty());
	EXPECT_TRUE(std::regex_match(lines_of(err).back(), std::regex("weld: stats: (\\d+)/\\1 tokens \\(100%\\) in .*")))
	    << err;
	ASSERT_EQ(test::run_weld(stats + " --force --quiet", &err), 0) << err;
	EXPECT_EQ(err, "");
}

} // namespace
} // namespace weld
