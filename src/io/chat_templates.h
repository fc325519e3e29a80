// The chat templates mergekit knows by name (its mergekit/_data/chat_templates), written for weld
// from the published prompt formats; data/chat_templates/*.jinja, built into the binary.
#pragma once

#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace weld {

// {name, Jinja text} in name order (generated from data/chat_templates at build time).
const std::vector<std::pair<std::string_view, std::string_view>>& embedded_chat_templates();

// The template called name, or nullopt.
inline std::optional<std::string_view> builtin_chat_template(std::string_view name) {
	for (const auto& [key, text] : embedded_chat_templates())
		if (key == name) return text;
	return std::nullopt;
}

} // namespace weld
