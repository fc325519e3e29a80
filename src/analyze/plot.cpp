#include "analyze/plot.h"

#include "io/png.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

namespace weld::analyze {
namespace {

// 3×5 glyphs, a row of 3 bits each (top row first, leftmost pixel the highest bit).
constexpr std::array<uint16_t, 5> glyph(char c) {
	switch (c) {
	case '0':
		return {7, 5, 5, 5, 7};
	case '1':
		return {2, 6, 2, 2, 7};
	case '2':
		return {7, 1, 7, 4, 7};
	case '3':
		return {7, 1, 7, 1, 7};
	case '4':
		return {5, 5, 7, 1, 1};
	case '5':
		return {7, 4, 7, 1, 7};
	case '6':
		return {7, 4, 7, 5, 7};
	case '7':
		return {7, 1, 1, 1, 1};
	case '8':
		return {7, 5, 7, 5, 7};
	case '9':
		return {7, 5, 7, 1, 7};
	case '.':
		return {0, 0, 0, 0, 2};
	case '-':
		return {0, 0, 7, 0, 0};
	case 'e':
		return {0, 7, 7, 4, 7};
	case '%':
		return {5, 1, 2, 4, 5};
	default:
		return {0, 0, 0, 0, 0};
	}
}

constexpr Rgb kBlack{0, 0, 0}, kGrey{200, 200, 200}, kWhite{255, 255, 255};

struct Canvas {
	int width, height;
	std::vector<uint8_t> rgb;

	Canvas(int w, int h) : width(w), height(h), rgb(static_cast<size_t>(w * h) * 3, 255) {}

	void set(int x, int y, const Rgb& c) {
		if (x < 0 || y < 0 || x >= width || y >= height) return;
		std::copy(c.begin(), c.end(), rgb.begin() + static_cast<ptrdiff_t>((y * width + x) * 3));
	}
	void fill(int x0, int y0, int x1, int y1, const Rgb& c) {
		for (int y = y0; y < y1; y++)
			for (int x = x0; x < x1; x++)
				set(x, y, c);
	}
	void line(double x0, double y0, double x1, double y1, const Rgb& c, int thickness = 1, bool dashed = false) {
		const int steps = static_cast<int>(std::max(std::abs(x1 - x0), std::abs(y1 - y0))) + 1;
		for (int s = 0; s <= steps; s++) {
			if (dashed && (s / 4) % 2) continue;
			const double t = static_cast<double>(s) / steps;
			const int x = static_cast<int>(std::lround(x0 + t * (x1 - x0)));
			const int y = static_cast<int>(std::lround(y0 + t * (y1 - y0)));
			fill(x - thickness / 2, y - thickness / 2, x - thickness / 2 + thickness, y - thickness / 2 + thickness, c);
		}
	}
	// Text at scale 2 (6×10 pixel glyphs, 8 apart); (x, y) is the top left corner.
	void text(int x, int y, const std::string& s, const Rgb& c) {
		for (char ch : s) {
			const auto g = glyph(ch);
			for (int row = 0; row < 5; row++)
				for (int col = 0; col < 3; col++)
					if (g[row] >> (2 - col) & 1) fill(x + col * 2, y + row * 2, x + col * 2 + 2, y + row * 2 + 2, c);
			x += 8;
		}
	}
	static int text_width(const std::string& s) { return static_cast<int>(s.size()) * 8 - 2; }
};

void write_png(const std::filesystem::path& file, const Canvas& c) {
	write_rgb_png(file, c.width, c.height, c.rgb);
}

Rgb mix(const Rgb& a, const Rgb& b, double t) {
	t = std::clamp(t, 0.0, 1.0);
	Rgb out;
	for (int k = 0; k < 3; k++)
		out[k] = static_cast<uint8_t>(std::lround(a[k] + t * (b[k] - a[k])));
	return out;
}

Rgb heat_color(double v, double lo, double hi) {
	if (!std::isfinite(v)) return kGrey;
	if (lo < 0) { // diverging around 0
		const double t = v / std::max(std::abs(lo), std::abs(hi));
		return t < 0 ? mix(kWhite, Rgb{33, 102, 172}, -t) : mix(kWhite, Rgb{178, 24, 43}, t);
	}
	return mix(kWhite, Rgb{8, 48, 107}, (v - lo) / (hi - lo));
}

// A tick label: few digits, whatever the magnitude.
std::string tick(double v) {
	const double a = std::abs(v);
	if (a == 0) return "0";
	if (a >= 1e4 || a < 1e-3) return fmt::format("{:.1e}", v);
	if (a >= 100) return fmt::format("{:.0f}", v);
	if (a >= 1) return fmt::format("{:.3g}", v);
	return fmt::format("{:.3f}", v);
}

} // namespace

Rgb series_color(size_t i) {
	static constexpr std::array<Rgb, 8> palette{{{31, 119, 180},
	                                             {255, 127, 14},
	                                             {44, 160, 44},
	                                             {214, 39, 40},
	                                             {148, 103, 189},
	                                             {140, 86, 75},
	                                             {227, 119, 194},
	                                             {127, 127, 127}}};
	return palette[i % palette.size()];
}

std::string css_color(const Rgb& c) {
	return fmt::format("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
}

void write_heatmap_png(const std::filesystem::path& file, const std::vector<std::vector<double>>& values, double lo,
                       double hi) {
	const int n = static_cast<int>(values.size());
	const int cell = std::max(24, std::min(64, 480 / std::max(1, n)));
	const int margin = 28;
	Canvas c(margin + n * cell + 2, margin + n * cell + 2);
	for (int i = 0; i < n; i++) {
		const auto label = std::to_string(i + 1);
		c.text(margin + i * cell + (cell - Canvas::text_width(label)) / 2, 8, label, kBlack);
		c.text(margin - 6 - Canvas::text_width(label), margin + i * cell + (cell - 10) / 2, label, kBlack);
		for (int j = 0; j < n; j++) {
			const double v = values[static_cast<size_t>(i)][static_cast<size_t>(j)];
			const Rgb color = heat_color(v, lo, hi);
			const int x = margin + j * cell, y = margin + i * cell;
			c.fill(x, y, x + cell, y + cell, color);
			const std::string label_v = std::isfinite(v) ? fmt::format("{:.2f}", v) : "";
			const bool dark = color[0] * 0.3 + color[1] * 0.59 + color[2] * 0.11 < 128;
			if (Canvas::text_width(label_v) + 4 <= cell)
				c.text(x + (cell - Canvas::text_width(label_v)) / 2, y + (cell - 10) / 2, label_v,
				       dark ? kWhite : kBlack);
		}
	}
	c.line(margin, margin, margin + n * cell, margin, kBlack);
	c.line(margin, margin + n * cell, margin + n * cell, margin + n * cell, kBlack);
	c.line(margin, margin, margin, margin + n * cell, kBlack);
	c.line(margin + n * cell, margin, margin + n * cell, margin + n * cell, kBlack);
	write_png(file, c);
}

void write_line_chart_png(const std::filesystem::path& file, const std::vector<std::vector<double>>& series,
                          double x_first, double x_step, double marker) {
	constexpr int kWidth = 640, kHeight = 320, kLeft = 70, kRight = 16, kTop = 14, kBottom = 30;
	size_t points = 0;
	double lo = 0, hi = 0;
	for (const auto& s : series) {
		points = std::max(points, s.size());
		for (double v : s)
			if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
	}
	if (hi <= lo) hi = lo + 1;
	hi += (hi - lo) * 0.05;
	Canvas c(kWidth, kHeight);
	const double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
	auto px = [&](double k) { return kLeft + (points > 1 ? k / static_cast<double>(points - 1) : 0.5) * plot_w; };
	auto py = [&](double v) { return kTop + (1 - (v - lo) / (hi - lo)) * plot_h; };
	for (int t = 0; t <= 4; t++) { // y grid and ticks
		const double v = lo + (hi - lo) * t / 4, y = py(v);
		c.line(kLeft, y, kWidth - kRight, y, Rgb{235, 235, 235});
		const auto label = tick(v);
		c.text(kLeft - 6 - Canvas::text_width(label), static_cast<int>(y) - 5, label, kBlack);
	}
	const size_t every = std::max<size_t>(1, (points + 11) / 12);
	for (size_t k = 0; k < points; k += every) { // x ticks
		const auto label = tick(x_first + x_step * static_cast<double>(k));
		c.line(px(static_cast<double>(k)), kHeight - kBottom, px(static_cast<double>(k)), kHeight - kBottom + 4,
		       kBlack);
		c.text(static_cast<int>(px(static_cast<double>(k))) - Canvas::text_width(label) / 2, kHeight - kBottom + 8,
		       label, kBlack);
	}
	c.line(kLeft, kTop, kLeft, kHeight - kBottom, kBlack);
	c.line(kLeft, kHeight - kBottom, kWidth - kRight, kHeight - kBottom, kBlack);
	if (std::isfinite(marker)) {
		const double x = px((marker - x_first) / x_step);
		c.line(x, kTop, x, kHeight - kBottom, Rgb{90, 90, 90}, 1, true);
	}
	for (size_t i = 0; i < series.size(); i++) {
		const auto& s = series[i];
		for (size_t k = 0; k < s.size(); k++) {
			if (!std::isfinite(s[k])) continue;
			const double x = px(static_cast<double>(k)), y = py(s[k]);
			if (k + 1 < s.size() && std::isfinite(s[k + 1]))
				c.line(x, y, px(static_cast<double>(k + 1)), py(s[k + 1]), series_color(i), 2);
			c.fill(static_cast<int>(x) - 3, static_cast<int>(y) - 3, static_cast<int>(x) + 4, static_cast<int>(y) + 4,
			       series_color(i));
		}
	}
	write_png(file, c);
}

} // namespace weld::analyze
