// PNG files of plots (weld analyze's report, weld search's Pareto front), through libpng.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace weld {

// Writes an 8-bit RGB image, rows top to bottom (rgb.size() == width * height * 3). Throws
// weld::Error naming the file when it cannot be written.
void write_rgb_png(const std::filesystem::path& file, int width, int height, const std::vector<uint8_t>& rgb);

} // namespace weld
