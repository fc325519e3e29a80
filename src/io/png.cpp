#include "io/png.h"

#include "util/error.h"

#include <fmt/format.h>
#include <png.h>

#include <cstdio>
#include <memory>

namespace weld {

void write_rgb_png(const std::filesystem::path& file, int width, int height, const std::vector<uint8_t>& rgb) {
	if (width <= 0 || height <= 0 || rgb.size() != static_cast<size_t>(width) * static_cast<size_t>(height) * 3)
		throw Error(fmt::format("{}: image of {}x{} pixels with {} bytes", file.string(), width, height, rgb.size()));
	std::unique_ptr<FILE, int (*)(FILE*)> out(std::fopen(file.c_str(), "wb"), std::fclose);
	if (!out) throw Error(fmt::format("{}: cannot write", file.string()));
	png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
	png_infop info = png ? png_create_info_struct(png) : nullptr;
	if (!info || setjmp(png_jmpbuf(png))) {
		png_destroy_write_struct(&png, &info);
		throw Error(fmt::format("{}: writing the PNG failed", file.string()));
	}
	png_init_io(png, out.get());
	png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB,
	             PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
	png_write_info(png, info);
	for (int y = 0; y < height; ++y)
		png_write_row(png, &rgb[static_cast<size_t>(y) * static_cast<size_t>(width) * 3]);
	png_write_end(png, nullptr);
	png_destroy_write_struct(&png, &info);
}

} // namespace weld
