#include "io/json.h"

#include "io/safetensors.h"
#include "util/error.h"

#include <fmt/format.h>

namespace weld {

nlohmann::json parse_json_object(std::string_view text, const std::string& label) {
	const std::string where = escape_for_message(label, 400);
	nlohmann::json j;
	try {
		j = nlohmann::json::parse(text);
	} catch (const nlohmann::json::exception& e) {
		throw Error(fmt::format("{}: invalid JSON: {}", where, escape_for_message(e.what(), 200)));
	}
	if (!j.is_object()) throw Error(fmt::format("{}: config is not a JSON object", where));
	return j;
}

} // namespace weld
