#include "search/plot.h"

#include "io/png.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

namespace weld::search {

namespace {

constexpr int kWidth = 640, kHeight = 480, kMargin = 40;

struct Canvas {
	std::vector<uint8_t> rgb = std::vector<uint8_t>(kWidth * kHeight * 3, 255);
	void dot(int x, int y, int radius, uint8_t r, uint8_t g, uint8_t b) {
		for (int dy = -radius; dy <= radius; ++dy)
			for (int dx = -radius; dx <= radius; ++dx) {
				const int px = x + dx, py = y + dy;
				if (px < 0 || py < 0 || px >= kWidth || py >= kHeight || dx * dx + dy * dy > radius * radius) continue;
				auto* p = &rgb[static_cast<size_t>(py * kWidth + px) * 3];
				p[0] = r, p[1] = g, p[2] = b;
			}
	}
	void line(int x0, int y0, int x1, int y1, uint8_t r, uint8_t g, uint8_t b) {
		const int steps = std::max({std::abs(x1 - x0), std::abs(y1 - y0), 1});
		for (int s = 0; s <= steps; ++s)
			dot(x0 + (x1 - x0) * s / steps, y0 + (y1 - y0) * s / steps, 0, r, g, b);
	}
};

} // namespace

void write_scatter_png(const std::filesystem::path& file, const std::vector<std::pair<double, double>>& points,
                       const std::vector<size_t>& highlighted) {
	double x0 = 0, x1 = 1, y0 = 0, y1 = 1;
	if (!points.empty()) {
		x0 = x1 = points[0].first, y0 = y1 = points[0].second;
		for (const auto& [x, y] : points)
			x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
	}
	if (x1 - x0 < 1e-12) x0 -= 0.5, x1 += 0.5;
	if (y1 - y0 < 1e-12) y0 -= 0.5, y1 += 0.5;
	auto px = [&](double x) { return kMargin + static_cast<int>((x - x0) / (x1 - x0) * (kWidth - 2 * kMargin)); };
	auto py = [&](double y) {
		return kHeight - kMargin - static_cast<int>((y - y0) / (y1 - y0) * (kHeight - 2 * kMargin));
	};
	Canvas c;
	c.line(kMargin, kHeight - kMargin, kWidth - kMargin, kHeight - kMargin, 0, 0, 0); // axes
	c.line(kMargin, kHeight - kMargin, kMargin, kMargin, 0, 0, 0);
	for (const auto& [x, y] : points)
		c.dot(px(x), py(y), 3, 160, 160, 160);
	auto front = highlighted;
	std::sort(front.begin(), front.end(), [&](size_t a, size_t b) { return points[a].first < points[b].first; });
	for (size_t i = 0; i + 1 < front.size(); ++i)
		c.line(px(points[front[i]].first), py(points[front[i]].second), px(points[front[i + 1]].first),
		       py(points[front[i + 1]].second), 220, 40, 40);
	for (size_t i : front)
		c.dot(px(points[i].first), py(points[i].second), 4, 220, 40, 40);

	write_rgb_png(file, kWidth, kHeight, c.rgb);
}

} // namespace weld::search
