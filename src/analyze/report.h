// `weld analyze`'s output folder: summary.json (every number) and index.html, a page that needs
// no script and no network, with its plots as PNG files beside it (analyze/plot.h).
#pragma once

#include "analyze/analyze.h"

#include <filesystem>

namespace weld::analyze {

// Writes summary.json, index.html and the PNGs into dir (which exists and is empty).
void write_report(const Analysis& analysis, const std::filesystem::path& dir);

} // namespace weld::analyze
