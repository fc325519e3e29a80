#include "util/size.h"

#include "util/error.h"

#include <fmt/format.h>

#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <utility>

namespace weld {

uint64_t parse_size(std::string_view text, std::string_view what) {
	auto bad = [&] {
		return Error(fmt::format("{}: '{}' is not a size (examples: 500MB, 2GB, 100KB, 1GiB)", what, text));
	};
	double number = 0;
	const auto* end = text.data() + text.size();
	auto [ptr, ec] = std::from_chars(text.data(), end, number);
	if (ec != std::errc() || !std::isfinite(number) || number < 0) throw bad();
	std::string unit;
	for (; ptr != end; ++ptr)
		if (!std::isspace(static_cast<unsigned char>(*ptr))) unit += static_cast<char>(std::toupper(*ptr));
	static constexpr std::array<std::pair<std::string_view, double>, 10> kUnits = {{
	    {"", 1},
	    {"B", 1},
	    {"KB", 1e3},
	    {"MB", 1e6},
	    {"GB", 1e9},
	    {"TB", 1e12},
	    {"KIB", 1024.0},
	    {"MIB", 1048576.0},
	    {"GIB", 1073741824.0},
	    {"TIB", 1099511627776.0},
	}};
	for (const auto& [name, scale] : kUnits) {
		if (unit != name) continue;
		const double bytes = number * scale;
		if (bytes < 1 || bytes > 1e18) throw bad();
		return static_cast<uint64_t>(bytes);
	}
	throw bad();
}

std::string format_size(uint64_t bytes) {
	const double b = static_cast<double>(bytes);
	if (b >= 1e9) return fmt::format("{:.2f} GB", b / 1e9);
	if (b >= 1e6) return fmt::format("{:.1f} MB", b / 1e6);
	if (b >= 1e3) return fmt::format("{:.1f} KB", b / 1e3);
	return fmt::format("{} B", bytes);
}

} // namespace weld
