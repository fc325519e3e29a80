// The training metrics of a run's LoRA checkpoints, for MWA (weld lora-merge --combination-type
// mwa): Hugging Face Trainer writes trainer_state.json into each checkpoint-N folder, and the
// run's final one into the output folder above them.
#pragma once

#include <filesystem>
#include <optional>

namespace weld::lora {

struct CheckpointMetrics {
	std::optional<double> step;       // the checkpoint's global step
	std::optional<double> loss;       // the training loss logged last at or before that step
	std::filesystem::path state_file; // the trainer_state.json read (empty when none)
};

// The step is global_step of trainer_state.json in the folder, else the N of a folder named
// checkpoint-N. The loss is the "loss" of the log_history entry with the largest "step" not
// after the checkpoint's, from trainer_state.json in the folder, else in the folder above (HF
// Trainer's log_history). Throws weld::Error naming the file when one exists but is unreadable.
CheckpointMetrics read_checkpoint_metrics(const std::filesystem::path& adapter_dir);

} // namespace weld::lora
