#include "analyze/report.h"

#include "analyze/plot.h"
#include "io/output_folder.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <map>

namespace weld::analyze {
namespace {

using json = nlohmann::ordered_json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The tensors' sums by layer, by module type and overall.
struct Groups {
	std::map<int, Sums> layers;
	std::map<std::string, Sums> modules;
	Sums overall;
	int layer_count = 0; // highest layer + 1
};

Groups group(const Analysis& a) {
	Groups g;
	g.overall = Sums(a.models.size());
	for (const auto& t : a.tensors) {
		if (t.place.layer >= 0) {
			g.layers.try_emplace(t.place.layer, a.models.size()).first->second.add(t.sums);
			g.layer_count = std::max(g.layer_count, t.place.layer + 1);
		}
		g.modules.try_emplace(t.place.module, a.models.size()).first->second.add(t.sums);
		g.overall.add(t.sums);
	}
	return g;
}

template <class F> json per_model(size_t n, F f) {
	json out = json::array();
	for (size_t i = 0; i < n; i++)
		out.push_back(f(i));
	return out;
}

template <class F> json pairwise(size_t n, F f) {
	return per_model(n, [&](size_t i) { return per_model(n, [&](size_t j) { return f(i, j); }); });
}

json sums_json(const Sums& s, size_t n) {
	json j = {{"elements", s.elements},
	          {"relative_norm", per_model(n, [&](size_t i) { return s.relative_norm(i); })},
	          {"cosine", pairwise(n, [&](size_t i, size_t k) { return s.cosine(i, k); })},
	          {"sign_conflict_rate", s.sign_conflict_rate()},
	          {"election_drop_rate", s.election_drop_rate()},
	          {"top_k_jaccard", pairwise(n, [&](size_t i, size_t k) { return s.top_k_jaccard(i, k); })},
	          {"matrices", s.matrices}};
	if (s.matrices > 0) {
		j["effective_rank"] = per_model(n, [&](size_t i) { return s.mean_effective_rank(i); });
		j["top_rank_energy"] = per_model(n, [&](size_t i) { return s.mean_top_rank_energy(i); });
		j["energy_curve"] = per_model(n, [&](size_t i) {
			return per_model(kCurvePoints, [&](size_t p) { return s.energy_curve_sum[i][p] / s.matrices; });
		});
	}
	return j;
}

json recipe_group_json(const RecipeTensor& r, size_t n) {
	return {{"elements", r.elements},
	        {"relative_norm", r.base_sq > 0 ? std::sqrt(r.merged_sq / r.base_sq) : 0.0},
	        {"unchanged_fraction", r.elements ? static_cast<double>(r.unchanged) / r.elements : 0.0},
	        {"kept_fraction", per_model(n, [&](size_t i) { return r.kept_fraction(i); })},
	        {"kept_mass_fraction", per_model(n, [&](size_t i) { return r.kept_mass_fraction(i); })}};
}

RecipeTensor empty_recipe_group(size_t n) {
	RecipeTensor r;
	r.nonzero.assign(n, 0), r.kept.assign(n, 0), r.mass.assign(n, 0), r.kept_mass.assign(n, 0);
	return r;
}

std::map<int, RecipeTensor> recipe_layers(const RecipeAnalysis& r) {
	std::map<int, RecipeTensor> layers;
	for (const auto& t : r.tensors)
		if (t.place.layer >= 0)
			layers.try_emplace(t.place.layer, empty_recipe_group(r.models.size())).first->second.add(t);
	return layers;
}

json recipe_json(const RecipeAnalysis& r) {
	const size_t n = r.models.size();
	RecipeTensor overall = empty_recipe_group(n);
	for (const auto& t : r.tensors)
		overall.add(t);
	json layers = json::array(), tensors = json::array();
	for (const auto& [layer, sums] : recipe_layers(r)) {
		json j = {{"layer", layer}};
		j.update(recipe_group_json(sums, n));
		layers.push_back(j);
	}
	for (const auto& t : r.tensors) {
		json j = {{"name", t.name}};
		j.update(recipe_group_json(t, n));
		tensors.push_back(j);
	}
	return {{"path", r.path.string()}, {"method", r.method},
	        {"models", r.models},      {"overall", recipe_group_json(overall, n)},
	        {"layers", layers},        {"tensors", tensors}};
}

json summary_json(const Analysis& a, const Groups& g) {
	const size_t n = a.models.size();
	json layers = json::array(), modules = json::array(), tensors = json::array();
	for (const auto& [layer, sums] : g.layers) {
		json j = {{"layer", layer}};
		j.update(sums_json(sums, n));
		layers.push_back(j);
	}
	for (const auto& [module, sums] : g.modules) {
		json j = {{"module", module}};
		j.update(sums_json(sums, n));
		modules.push_back(j);
	}
	for (const auto& t : a.tensors) {
		json j = {{"name", t.name}, {"shape", t.shape}, {"layer", t.place.layer}, {"module", t.place.module}};
		j.update(sums_json(t.sums, n));
		if (t.sums.matrices) j["kept_rank"] = t.kept_rank;
		tensors.push_back(j);
	}
	json out = {{"base", a.base},
	            {"models", a.models},
	            {"top_k_fraction", kTopKFraction},
	            {"overall", sums_json(g.overall, n)},
	            {"layers", layers},
	            {"modules", modules},
	            {"tensors", tensors}};
	if (a.recipe) out["recipe"] = recipe_json(*a.recipe);
	return out;
}

std::string escape(const std::string& s) {
	std::string out;
	for (char c : s) {
		switch (c) {
		case '<':
			out += "&lt;";
			break;
		case '>':
			out += "&gt;";
			break;
		case '&':
			out += "&amp;";
			break;
		case '"':
			out += "&quot;";
			break;
		default:
			out += c;
		}
	}
	return out;
}

// A value per layer (NaN where a layer has no tensors), one series per model.
template <class F> std::vector<std::vector<double>> layer_series(const Groups& g, size_t series, F value) {
	std::vector<std::vector<double>> out(series, std::vector<double>(static_cast<size_t>(g.layer_count), kNaN));
	for (const auto& [layer, sums] : g.layers)
		for (size_t i = 0; i < series; i++)
			out[i][static_cast<size_t>(layer)] = value(sums, i);
	return out;
}

std::string legend(const std::vector<std::string>& names) {
	std::string html = "<p class=\"legend\">";
	for (size_t i = 0; i < names.size(); i++)
		html += fmt::format("<span><i style=\"background:{}\"></i>{}</span> ", css_color(series_color(i)),
		                    escape(names[i]));
	return html + "</p>\n";
}

std::string figure(const std::string& png, const std::string& caption) {
	return fmt::format("<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>\n", png,
	                   escape(caption), caption);
}

// Model pairs i < j, as "1·2" labels.
std::vector<std::pair<size_t, size_t>> model_pairs(size_t n) {
	std::vector<std::pair<size_t, size_t>> pairs;
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			pairs.emplace_back(i, j);
	return pairs;
}

std::string pct(double v) {
	return fmt::format("{:.1f}%", 100 * v);
}

std::string module_table(const Analysis& a, const Groups& g) {
	const size_t n = a.models.size();
	std::string html = "<table><tr><th>module</th><th>tensors' elements</th>";
	for (size_t i = 0; i < n; i++)
		html += fmt::format("<th>‖τ<sub>{0}</sub>‖/‖θ<sub>base</sub>‖</th>", i + 1);
	html += "<th>mean cosine</th><th>sign conflicts</th><th>dropped by election</th><th>top-10% Jaccard</th>";
	for (size_t i = 0; i < n; i++)
		html += fmt::format("<th>eff. rank {}</th><th>top-1/N energy {}</th>", i + 1, i + 1);
	html += "</tr>\n";
	const auto pairs = model_pairs(n);
	for (const auto& [module, s] : g.modules) {
		double cos = 0, jac = 0;
		for (const auto& [i, j] : pairs)
			cos += s.cosine(i, j), jac += s.top_k_jaccard(i, j);
		const double np = std::max<double>(1, static_cast<double>(pairs.size()));
		html += fmt::format("<tr><td>{}</td><td>{}</td>", escape(module), s.elements);
		for (size_t i = 0; i < n; i++)
			html += fmt::format("<td>{:.4f}</td>", s.relative_norm(i));
		html += fmt::format("<td>{:.3f}</td><td>{}</td><td>{}</td><td>{:.3f}</td>", pairs.empty() ? 1.0 : cos / np,
		                    pct(s.sign_conflict_rate()), pct(s.election_drop_rate()), pairs.empty() ? 1.0 : jac / np);
		for (size_t i = 0; i < n; i++)
			html += s.matrices ? fmt::format("<td>{:.1f}</td><td>{}</td>", s.mean_effective_rank(i),
			                                 pct(s.mean_top_rank_energy(i)))
			                   : "<td>–</td><td>–</td>";
		html += "</tr>\n";
	}
	return html + "</table>\n";
}

std::string norms_section(const Analysis& a, const Groups& g, const std::filesystem::path& dir) {
	const size_t n = a.models.size();
	write_line_chart_png(dir / "norms.png",
	                     layer_series(g, n, [](const Sums& s, size_t i) { return s.relative_norm(i); }));
	return "<h2>Task-vector norms</h2>\n<p>‖θ<sub>i</sub> − θ<sub>base</sub>‖ / ‖θ<sub>base</sub>‖ per layer: how far "
	       "each fine-tune moved. Task arithmetic's weights and TIES' density act on these vectors; a model that "
	       "moved much further than the others dominates a plain average.</p>\n" +
	       legend(a.models) + figure("norms.png", "relative task-vector norm (y) per layer (x)");
}

std::string cosine_section(const Analysis& a, const Groups& g, const std::filesystem::path& dir) {
	const size_t n = a.models.size();
	auto matrix = [&](const Sums& s) {
		std::vector<std::vector<double>> m(n, std::vector<double>(n));
		for (size_t i = 0; i < n; i++)
			for (size_t j = 0; j < n; j++)
				m[i][j] = s.cosine(i, j);
		return m;
	};
	write_heatmap_png(dir / "cosine.png", matrix(g.overall), -1, 1);
	std::string html = "<h2>Cosine similarity of task vectors</h2>\n<p>cos(τ<sub>i</sub>, τ<sub>j</sub>), rows and "
	                   "columns numbered as the models above. Near 0: the fine-tunes moved in unrelated directions "
	                   "(merging adds them with little interference); near 1: they agree; negative: they undo each "
	                   "other, and averaging cancels both.</p>\n" +
	                   figure("cosine.png", "all tensors") + "<div class=\"grid\">\n";
	for (const auto& [layer, s] : g.layers) {
		const auto png = fmt::format("cosine_layer_{}.png", layer);
		write_heatmap_png(dir / png, matrix(s), -1, 1);
		html += figure(png, fmt::format("layer {}", layer));
	}
	return html + "</div>\n";
}

std::string sign_section(const Groups& g, const std::filesystem::path& dir) {
	write_line_chart_png(dir / "sign_conflicts.png", layer_series(g, 2, [](const Sums& s, size_t k) {
		                     return k == 0 ? s.sign_conflict_rate() : s.election_drop_rate();
	                     }));
	return "<h2>Sign conflicts</h2>\n<p>Blue: the fraction of entries where the nonzero task-vector entries disagree "
	       "in sign. Orange: the share of Σ|τ| that TIES' sign election (the sign of Σ<sub>i</sub>τ<sub>i</sub>, "
	       "before trimming) would drop. Overall: " +
	       pct(g.overall.sign_conflict_rate()) + " of entries conflict; the election drops " +
	       pct(g.overall.election_drop_rate()) + " of the mass.</p>\n" +
	       legend({"sign-conflict rate", "dropped by election"}) +
	       figure("sign_conflicts.png", "fraction (y) per layer (x)");
}

std::string spectrum_section(const Analysis& a, const Groups& g, const std::filesystem::path& dir) {
	const size_t n = a.models.size();
	if (g.overall.matrices == 0) return "<h2>Spectrum</h2>\n<p>No 2-D tensors.</p>\n";
	write_line_chart_png(dir / "effective_rank.png",
	                     layer_series(g, n, [](const Sums& s, size_t i) { return s.mean_effective_rank(i); }));
	std::vector<std::vector<double>> curves(n);
	for (size_t i = 0; i < n; i++)
		for (int p = 0; p < kCurvePoints; p++)
			curves[i].push_back(g.overall.energy_curve_sum[i][p] / static_cast<double>(g.overall.matrices));
	write_line_chart_png(dir / "energy.png", curves, 0, 100.0 / (kCurvePoints - 1), 100.0 / static_cast<double>(n));
	std::string kept;
	for (size_t i = 0; i < n; i++)
		kept += fmt::format("{}{}: {}", i ? ", " : "", escape(a.models[i]), pct(g.overall.mean_top_rank_energy(i)));
	return "<h2>Spectrum of the task vectors</h2>\n<p>Entropy effective rank exp(−Σ p<sub>k</sub> ln p<sub>k</sub>), "
	       "p<sub>k</sub> = σ<sub>k</sub>/Σσ, of each 2-D task vector, averaged per layer: low means the fine-tune's "
	       "change is nearly low-rank (LoRA-like), which TSV and other SVD methods exploit.</p>\n" +
	       legend(a.models) + figure("effective_rank.png", "mean effective rank (y) per layer (x)") +
	       "<p>Energy Σ<sub>k&lt;r</sub>σ<sub>k</sub>² / Σσ<sub>k</sub>² kept by the top r singular values, r a "
	       "percentage of the full rank, averaged over the 2-D tensors. The dashed line is 1/N of the rank, what "
	       "TSV keeps of each of the N task vectors; there they keep " +
	       kept + ".</p>\n" + figure("energy.png", "energy kept (y) against the percentage of the rank kept (x)");
}

std::string overlap_section(const Analysis& a, const Groups& g, const std::filesystem::path& dir) {
	const size_t n = a.models.size();
	std::vector<std::vector<double>> m(n, std::vector<double>(n));
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < n; j++)
			m[i][j] = g.overall.top_k_jaccard(i, j);
	write_heatmap_png(dir / "overlap.png", m, 0, 1);
	std::string html = "<h2>Top-10% overlap</h2>\n<p>Jaccard overlap |A<sub>i</sub> ∩ A<sub>j</sub>| / |A<sub>i</sub> "
	                   "∪ A<sub>j</sub>| of each model's top 10% of entries by |τ| per tensor: the entries "
	                   "Localize-and-Stitch would localize. Independent choices overlap by about 0.05; a high overlap "
	                   "means the models compete for the same weights.</p>\n" +
	                   figure("overlap.png", "all tensors");
	const auto pairs = model_pairs(n);
	if (pairs.empty()) return html;
	std::vector<std::string> names;
	for (const auto& [i, j] : pairs)
		names.push_back(fmt::format("{} · {}", a.models[i], a.models[j]));
	write_line_chart_png(dir / "overlap_layers.png", layer_series(g, pairs.size(), [&](const Sums& s, size_t p) {
		                     return s.top_k_jaccard(pairs[p].first, pairs[p].second);
	                     }));
	return html + legend(names) + figure("overlap_layers.png", "Jaccard overlap (y) per layer (x)");
}

std::string recipe_section(const RecipeAnalysis& r, const std::filesystem::path& dir) {
	const size_t n = r.models.size();
	const auto layers = recipe_layers(r);
	int layer_count = 0;
	for (const auto& [layer, sums] : layers)
		layer_count = std::max(layer_count, layer + 1);
	std::vector<std::vector<double>> kept(n, std::vector<double>(static_cast<size_t>(layer_count), kNaN));
	for (const auto& [layer, sums] : layers)
		for (size_t i = 0; i < n; i++)
			kept[i][static_cast<size_t>(layer)] = sums.kept_mass_fraction(i);
	std::string html = fmt::format(
	    "<h2>What the recipe keeps</h2>\n<p>{} ({}), merged tensor by tensor with weld's own method code. Per layer, "
	    "the share of each model's Σ|τ| (and of its nonzero entries) that the merge takes from it: the entries whose "
	    "merged value moves when that model's task vector alone is scaled by 1 − 1/64. The rest the merge dropped "
	    "(trimmed, randomly dropped, or overruled by the sign election).</p>\n",
	    escape(r.path.string()), escape(r.method));
	if (layer_count > 0) {
		write_line_chart_png(dir / "recipe_kept.png", kept);
		html += legend(r.models) + figure("recipe_kept.png", "share of |τ| kept (y) per layer (x)");
	}
	html += "<table><tr><th>layer</th><th>‖Δ‖/‖θ<sub>base</sub>‖</th><th>unchanged entries</th>";
	for (size_t i = 0; i < n; i++)
		html +=
		    fmt::format("<th>{} kept (entries)</th><th>{} kept (|τ|)</th>", escape(r.models[i]), escape(r.models[i]));
	html += "</tr>\n";
	for (const auto& [layer, s] : layers) {
		html += fmt::format("<tr><td>{}</td><td>{:.4f}</td><td>{}</td>", layer,
		                    s.base_sq > 0 ? std::sqrt(s.merged_sq / s.base_sq) : 0.0,
		                    pct(s.elements ? static_cast<double>(s.unchanged) / s.elements : 0.0));
		for (size_t i = 0; i < n; i++)
			html += fmt::format("<td>{}</td><td>{}</td>", pct(s.kept_fraction(i)), pct(s.kept_mass_fraction(i)));
		html += "</tr>\n";
	}
	return html + "</table>\n";
}

constexpr const char* kStyle = R"(body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}figure{display:inline-block;margin:0.5em}figcaption{font-size:85%;color:#555}
.legend span{margin-right:1.5em}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px}
.grid figure img{width:160px})";

std::string html_page(const Analysis& a, const Groups& g, const std::filesystem::path& dir) {
	std::string models;
	for (size_t i = 0; i < a.models.size(); i++)
		models += fmt::format("<li>{}</li>", escape(a.models[i]));
	std::string html =
	    fmt::format("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>weld analyze: {}</title>"
	                "<style>{}</style></head><body>\n<h1>weld analyze</h1>\n<p>Base model "
	                "<b>{}</b>; {} tensors, {} elements each model. Task vectors "
	                "τ<sub>i</sub> = θ<sub>i</sub> − θ<sub>base</sub> of:</p><ol>{}</ol>\n",
	                escape(a.base), kStyle, escape(a.base), a.tensors.size(), g.overall.elements, models);
	html += norms_section(a, g, dir) + cosine_section(a, g, dir) + sign_section(g, dir) + spectrum_section(a, g, dir) +
	        overlap_section(a, g, dir);
	if (a.recipe) html += recipe_section(*a.recipe, dir);
	html += "<h2>Per module type</h2>\n" + module_table(a, g);
	return html + "<p>Every number is in summary.json.</p>\n</body></html>\n";
}

} // namespace

void write_report(const Analysis& analysis, const std::filesystem::path& dir) {
	const Groups g = group(analysis);
	write_text_file(dir / "summary.json", summary_json(analysis, g).dump(1) + "\n");
	write_text_file(dir / "index.html", html_page(analysis, g, dir));
}

} // namespace weld::analyze
