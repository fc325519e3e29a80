// A scatter plot as PNG (libpng): every point in grey, the highlighted ones in red joined by a
// line in x order, on axes from the data's range. No text: the caller says in words what the
// axes are (pareto.md beside it).
#pragma once

#include <filesystem>
#include <utility>
#include <vector>

namespace weld::search {

void write_scatter_png(const std::filesystem::path& file, const std::vector<std::pair<double, double>>& points,
                       const std::vector<size_t>& highlighted);

} // namespace weld::search
