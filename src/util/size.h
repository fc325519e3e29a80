// Byte sizes as users write them: "5GB", "500MB", "100KB", "2GiB", "1048576".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace weld {

// Decimal units (KB, MB, GB, TB = powers of 1000, as Hugging Face uses) and binary ones
// (KiB, MiB, GiB, TiB); case-insensitive; a bare number is bytes. Throws weld::Error naming
// `what` (e.g. "--out-shard-size") when the text is not a size.
uint64_t parse_size(std::string_view text, std::string_view what);
std::string format_size(uint64_t bytes);

} // namespace weld
