#include "lora/checkpoints.h"

#include "io/output_folder.h"
#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <charconv>
#include <string>

namespace weld::lora {
namespace {

nlohmann::json read_state(const std::filesystem::path& path) {
	try {
		auto state = nlohmann::json::parse(read_text_file(path));
		if (!state.is_object()) throw Error("not a JSON object");
		if (state.contains("log_history") && !state["log_history"].is_array()) throw Error("log_history is not a list");
		return state;
	} catch (const std::exception& e) {
		throw Error(fmt::format("{}: cannot read the trainer state: {}", path.string(), e.what()));
	}
}

// N of a folder named checkpoint-N.
std::optional<double> step_from_folder_name(const std::filesystem::path& dir) {
	const std::string name = dir.filename().string();
	const std::string prefix = "checkpoint-";
	if (!name.starts_with(prefix)) return std::nullopt;
	uint64_t step = 0;
	const char* first = name.data() + prefix.size();
	const char* last = name.data() + name.size();
	const auto [end, ec] = std::from_chars(first, last, step);
	if (ec != std::errc() || end != last) return std::nullopt;
	return static_cast<double>(step);
}

// The "loss" logged last at or before `step` (at any step when it is unknown).
std::optional<double> loss_at(const nlohmann::json& state, std::optional<double> step,
                              const std::filesystem::path& path) {
	std::optional<double> loss, logged_at;
	for (const auto& entry : state.value("log_history", nlohmann::json::array())) {
		if (!entry.is_object() || !entry.contains("loss") || !entry.contains("step")) continue;
		if (!entry["loss"].is_number() || !entry["step"].is_number())
			throw Error(fmt::format("{}: log_history has a loss or step that is not a number", path.string()));
		const double at = entry["step"].get<double>();
		if (step && at > *step) continue;
		if (!logged_at || at >= *logged_at) {
			logged_at = at;
			loss = entry["loss"].get<double>();
		}
	}
	return loss;
}

} // namespace

CheckpointMetrics read_checkpoint_metrics(const std::filesystem::path& adapter_dir) {
	CheckpointMetrics metrics;
	auto dir = std::filesystem::absolute(adapter_dir).lexically_normal();
	if (dir.filename().empty()) dir = dir.parent_path(); // "checkpoint-5/"
	const auto here = dir / "trainer_state.json", above = dir.parent_path() / "trainer_state.json";
	metrics.step = step_from_folder_name(dir);
	if (std::filesystem::exists(here)) {
		metrics.state_file = here;
		const auto state = read_state(here);
		if (state.contains("global_step") && state["global_step"].is_number())
			metrics.step = state["global_step"].get<double>();
		metrics.loss = loss_at(state, metrics.step, here);
	} else if (std::filesystem::exists(above) && metrics.step) {
		metrics.state_file = above;
		metrics.loss = loss_at(read_state(above), metrics.step, above);
	}
	return metrics;
}

} // namespace weld::lora
