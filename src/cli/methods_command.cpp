#include "cli/commands.h"
#include "exec/describe.h"
#include "methods/method.h"
#include "util/error.h"

#include <fmt/format.h>

#include <memory>

namespace weld::cli {
namespace {

std::string describe_param(const ParamDef& def) {
	std::string text = def.name;
	if (def.required)
		text += " (required)";
	else if (def.type == ParamType::Text)
		text += " (optional)";
	else if (!def.has_default)
		text += " (optional)";
	else if (def.type == ParamType::Bool)
		text += def.default_value != 0 ? "=true" : "=false";
	else
		text += fmt::format("={:g}", def.default_value);
	return text;
}

const char* base_use(BaseModel base) {
	switch (base) {
	case BaseModel::Required:
		return "required";
	case BaseModel::Optional:
		return "optional";
	case BaseModel::Ignored:
		break;
	}
	return "only if listed";
}

std::string param_list(const std::vector<ParamDef>& defs) {
	std::string out;
	for (const auto& def : defs)
		out += (out.empty() ? "" : ", ") + describe_param(def);
	return out;
}

void print_method(const MethodInfo& info, bool details) {
	fmt::print("{:<18} {}\n", info.name, info.description);
	if (!details) {
		if (!info.global_params.empty()) fmt::print("{:<18} global: {}\n", "", param_list(info.global_params));
		if (!info.model_params.empty()) fmt::print("{:<18} per model: {}\n", "", param_list(info.model_params));
		return;
	}
	fmt::print("  base model: {}\n", base_use(info.base));
	fmt::print("  reference: {}\n", info.reference);
	if (!info.statistics.empty())
		fmt::print("  statistics: each model's parameters: {{stats: FOLDER}}, {}\n",
		           statistics_origin(info.statistics));
	if (info.learned)
		fmt::print("  learns from data with the model runtime (weld-torch), then merges as task_arithmetic\n");
	for (const auto& def : info.global_params)
		fmt::print("  {:<22} global     {}\n", describe_param(def), def.help);
	for (const auto& def : info.model_params)
		fmt::print("  {:<22} per model  {}\n", describe_param(def), def.help);
}

// The table of docs/methods.md (a test keeps the two equal).
void print_markdown_table() {
	fmt::print("| method | what it computes | base model | global parameters | per-model parameters | reference |\n");
	fmt::print("|---|---|---|---|---|---|\n");
	auto list = [](const std::vector<ParamDef>& defs) {
		std::string out;
		for (const auto& def : defs)
			out += (out.empty() ? "`" : ", `") + describe_param(def) + "`";
		return out.empty() ? std::string("—") : out;
	};
	for (const auto* method : all_methods()) {
		const auto& info = method->info();
		fmt::print("| `{}` | {} | {} | {} | {} | {} |\n", info.name, info.description, base_use(info.base),
		           list(info.global_params), list(info.model_params), info.reference);
	}
}

} // namespace

std::function<int()> add_methods_command(CLI::App& app) {
	auto name = std::make_shared<std::string>();
	auto markdown = std::make_shared<bool>(false);
	auto json = std::make_shared<bool>(false);
	auto* cmd = app.add_subcommand("methods", "List the merge methods, or show one with its parameters");
	cmd->add_option("name", *name, "a method name");
	cmd->add_flag("--markdown", *markdown, "print the table of every method as Markdown (docs/methods.md)");
	cmd->add_flag("--json", *json, "machine-readable: each method's properties and parameters, by name");
	return [name, markdown, json] {
		if (*markdown) {
			print_markdown_table();
			return 0;
		}
		if (*json && name->empty()) {
			fmt::print("{}\n", describe_methods().dump(2));
			return 0;
		}
		if (name->empty()) {
			for (const auto* method : all_methods())
				print_method(method->info(), false);
			return 0;
		}
		const auto* method = find_method(*name);
		if (!method) throw Error(fmt::format("unknown method '{}' (see `weld methods`)", *name));
		if (*json) {
			nlohmann::ordered_json one;
			one[*name] = describe_method(method->info());
			fmt::print("{}\n", one.dump(2));
			return 0;
		}
		print_method(method->info(), true);
		return 0;
	};
}

} // namespace weld::cli
