// Reading the small JSON files of model folders (config.json and the like).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace weld {

// Parses text that must hold one JSON object; errors name `label` (the file) and what is wrong.
nlohmann::json parse_json_object(std::string_view text, const std::string& label);

} // namespace weld
