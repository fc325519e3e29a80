// The weld subcommands. Each registers its options on the CLI11 app and runs when chosen.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace weld::cli {

// Each returns the function to call when its subcommand was given (exit status).
std::function<int()> add_merge_command(CLI::App& app);
std::function<int()> add_inspect_command(CLI::App& app);
std::function<int()> add_methods_command(CLI::App& app);
std::function<int()> add_example_command(CLI::App& app);
std::function<int()> add_tall_command(CLI::App& app);
std::function<int()> add_eval_command(CLI::App& app);
std::function<int()> add_train_command(CLI::App& app);
std::function<int()> add_stats_command(CLI::App& app);
std::function<int()> add_search_command(CLI::App& app);
std::function<int()> add_task_data_command(CLI::App& app);
std::function<int()> add_moe_command(CLI::App& app);
std::function<int()> add_apply_lora_command(CLI::App& app);
std::function<int()> add_extract_lora_command(CLI::App& app);
std::function<int()> add_lora_merge_command(CLI::App& app);
std::function<int()> add_rmm_command(CLI::App& app);
std::function<int()> add_convert_command(CLI::App& app);
std::function<int()> add_analyze_command(CLI::App& app);
std::function<int()> add_align_command(CLI::App& app);
std::function<int()> add_protect_command(CLI::App& app);
std::function<int()> add_verify_protect_command(CLI::App& app);

} // namespace weld::cli
