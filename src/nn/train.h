// Training and fine-tuning of the runtime's models on CPU: AdamW (libtorch's), a cosine
// learning-rate schedule after a linear warm-up, gradient clipping by global norm, and a
// deterministic order of examples. Torch-free header, so that the command line compiles
// without libtorch's headers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace weld::nn {

struct TrainOptions {
	int64_t steps = 1000;
	int64_t batch = 32;         // sequences per step
	double lr = 1e-3;           // peak learning rate
	double min_lr = 1e-4;       // where the cosine ends
	int64_t warmup = 0;         // steps of linear warm-up
	double weight_decay = 0.01; // on matrices and embeddings; never on norms and biases
	double beta1 = 0.9, beta2 = 0.99, eps = 1e-8;
	double clip = 1.0; // global gradient norm limit; 0: none
	int threads = 0;   // 0: libtorch's default (all cores)
	// LoRA (Hu et al. 2022): with lora_rank > 0, every attention and MLP projection W trains as
	// W0 + (lora_alpha / lora_rank) * B A with A [rank, in] drawn from U(-1/sqrt(in), 1/sqrt(in)),
	// B [out, rank] zero, W0 frozen, as PEFT does; embeddings, lm_head and norms stay frozen. The
	// saved model has the update folded in. lora_alpha 0 means lora_rank (a scale of 1).
	int64_t lora_rank = 0;
	double lora_alpha = 0;
};

// Learning rate for step (0-based): lr * (step + 1) / warmup during the warm-up, then
// min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2 with t going from 0 to 1 over the remaining
// steps (t = (step - warmup) / (steps - warmup - 1); the last step uses min_lr).
double learning_rate(const TrainOptions& options, int64_t step);

// One training sequence: token ids, and the first position whose token is a target (the loss is
// the mean negative log-likelihood of ids[loss_from..] over the batch, each predicted from the
// ones before it; loss_from >= 1).
struct TrainingSequence {
	std::vector<int64_t> ids;
	size_t loss_from = 1;
};

// The index-th sequence of the training stream; batch b of step s holds indices
// s * batch .. s * batch + batch - 1, so a run depends on the stream and the options alone.
using SequenceStream = std::function<TrainingSequence(uint64_t index)>;

// Procedural tasks (src/nn/tasks.h) in turn: index i is task tasks[i % n]'s training example
// i / n for seed (from their easy slices only with easy_only), as BOS + prompt + answer with the
// loss on the answer.
SequenceStream task_stream(const std::vector<std::string>& tasks, uint64_t seed, int64_t vocab_size,
                           const std::string& model, bool easy_only = false);

// The sequences of a data file, in file order: prompt/answer JSONL (loss on the answer), token
// id JSONL or text lines (loss on every token after the first), tokenized by the model folder's
// tokenizer.json where it has one (prompt with BOS as its files say, then the answer), else as
// byte tokens; lines longer than max_positions are cut. Throws weld::Error naming the file when it holds no sequence of
// two or more tokens, or is malformed.
std::vector<TrainingSequence> read_sequences(const std::filesystem::path& file, int64_t vocab_size,
                                             int64_t max_positions, const std::string& model);

// A data file, in an order shuffled anew each epoch from seed: prompt/answer JSONL (loss on the
// answer), or text lines (loss on every token after the first), tokenized as read_sequences
// does; lines longer than max_positions are cut.
SequenceStream file_stream(const std::filesystem::path& file, uint64_t seed, int64_t vocab_size, int64_t max_positions,
                           const std::string& model);

struct StepReport {
	int64_t step = 0; // 0-based
	double loss = 0, lr = 0, grad_norm = 0;
};

// What to train and on what. The model is `init` (a folder) or, when init is empty, a new one
// created from config_file with seed. The data are the procedural tasks named in tasks ("all"
// for every one), or else the data file. The result goes to out (which must not exist or be
// empty), with the optimizer's second moments in out/optimizer/ when save_optimizer: a
// model.safetensors holding each weight's AdamW exp_avg_sq under the weight's name, and
// optimizer.json (step count, betas, eps).
struct TrainJob {
	std::filesystem::path init, config_file, out;
	std::vector<std::string> tasks;
	std::filesystem::path data;
	uint64_t seed = 0;      // initialization and the order of examples
	bool easy_only = false; // with tasks: only their easy slices (tasks::make_training_example)
	bool save_optimizer = false;
	bool force = false; // replace an existing out
};
void train(const TrainJob& job, const TrainOptions& options, const std::function<void(const StepReport&)>& on_step);

} // namespace weld::nn
