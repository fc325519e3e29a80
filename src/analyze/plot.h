// The report's plots as PNG files (libpng): heat maps and line charts with tick numbers drawn in
// a small built-in digit font. Names, legends and axis titles are the HTML's (analyze/report.h).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

namespace weld::analyze {

using Rgb = std::array<uint8_t, 3>;

// The colour of series i in line charts (the HTML legend uses the same).
Rgb series_color(size_t i);
std::string css_color(const Rgb& c);

// An n×n heat map of values in [lo, hi]: diverging blue–white–red when lo < 0, else white to
// dark blue; each cell shows its value to two decimals, rows and columns are numbered from 1.
void write_heatmap_png(const std::filesystem::path& file, const std::vector<std::vector<double>>& values, double lo,
                       double hi);

// One line per series over points x = x_first + k·x_step, y from 0 (or the lowest value, if
// negative) to the highest; tick numbers on both axes; a dashed vertical line at `marker` unless
// it is NaN. Values may be NaN: a gap.
void write_line_chart_png(const std::filesystem::path& file, const std::vector<std::vector<double>>& series,
                          double x_first = 0, double x_step = 1,
                          double marker = std::numeric_limits<double>::quiet_NaN());

} // namespace weld::analyze
