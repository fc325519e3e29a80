#include "nn/train.h"

#include "io/output_folder.h"
#include "io/safetensors.h"
#include "nn/llama.h"
#include "nn/loss.h"
#include "nn/tasks.h"
#include "nn/tokenizer.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/optim/adamw.h>
// clip_grad.h uses torch::Tensor without including its declaration.
#include <torch/types.h>

#include <torch/nn/utils/clip_grad.h>

#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>

namespace weld::nn {
namespace fs = std::filesystem;

double learning_rate(const TrainOptions& o, int64_t step) {
	if (step < o.warmup) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
	const int64_t decay_steps = o.steps - o.warmup - 1;
	if (decay_steps <= 0) return o.lr;
	const double t = std::min(1.0, static_cast<double>(step - o.warmup) / static_cast<double>(decay_steps));
	return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1.0 + std::cos(M_PI * t));
}

namespace {

// weld's procedural tasks are written for byte tokens.
ByteTokenizer task_tokenizer(int64_t vocab_size, const std::string& model) {
	if (!model.empty())
		if (const auto own = own_tokenizer_file(model); !own.empty())
			throw Error(fmt::format("{}: the model has its own tokenizer ({}); weld's tasks train on byte tokens only",
			                        show(model), own));
	return ByteTokenizer(vocab_size, model);
}

TrainingSequence prompt_answer_sequence(const ByteTokenizer& tokenizer, const std::string& prompt,
                                        const std::string& answer) {
	TrainingSequence s{tokenizer.encode(prompt + answer), 0};
	s.loss_from = std::max<size_t>(1, s.ids.size() - answer.size());
	return s;
}

// The prompt's tokens (with BOS as the tokenizer's files say), then the answer's, on which the
// loss is computed.
TrainingSequence prompt_answer_sequence(const ModelTokenizer& tokenizer, const std::string& prompt,
                                        const std::string& answer) {
	TrainingSequence s{tokenizer.encode(prompt), 0};
	s.loss_from = std::max<size_t>(1, s.ids.size());
	const auto answer_ids = tokenizer.encode_plain(answer);
	s.ids.insert(s.ids.end(), answer_ids.begin(), answer_ids.end());
	return s;
}

} // namespace

SequenceStream task_stream(const std::vector<std::string>& names, uint64_t seed, int64_t vocab_size,
                           const std::string& model, bool easy_only) {
	const auto chosen = tasks::find_tasks(names);
	const auto tokenizer = task_tokenizer(vocab_size, model);
	return [chosen, seed, tokenizer, easy_only](uint64_t index) {
		const auto example =
		    tasks::make_training_example(chosen[index % chosen.size()], seed, index / chosen.size(), easy_only);
		return prompt_answer_sequence(tokenizer, example.prompt, example.answer);
	};
}

std::vector<TrainingSequence> read_sequences(const fs::path& file, int64_t vocab_size, int64_t max_positions,
                                             const std::string& model) {
	if (!fs::is_regular_file(file)) throw Error(fmt::format("{}: no such file", show(file)));
	std::vector<TrainingSequence> sequences;
	const size_t room = max_positions > 0 ? static_cast<size_t>(max_positions) : SIZE_MAX;
	switch (detect_data_kind(file)) {
	case DataKind::TokenIds:
		for (auto& ids : read_token_id_lines(file, vocab_size))
			if (ids.size() >= 2)
				sequences.push_back({std::vector<int64_t>(ids.begin(), ids.begin() + std::min(room, ids.size())), 1});
		break;
	case DataKind::PromptAnswer: {
		const ModelTokenizer tokenizer(model, vocab_size);
		for (const auto& r : read_prompt_answer_lines(file)) {
			auto s = prompt_answer_sequence(tokenizer, r.prompt, r.answer);
			if (s.ids.size() > room)
				throw Error(fmt::format("{}: a prompt and answer of {} tokens exceed max_position_embeddings {}",
				                        show(file), s.ids.size(), max_positions));
			sequences.push_back(std::move(s));
		}
		break;
	}
	case DataKind::Text: {
		const ModelTokenizer tokenizer(model, vocab_size);
		for (const auto& line : read_text_lines(file)) {
			auto ids = tokenizer.encode(line);
			ids.resize(std::min(ids.size(), room));
			if (ids.size() >= 2) sequences.push_back({std::move(ids), 1});
		}
		break;
	}
	}
	if (sequences.empty()) throw Error(fmt::format("{}: no sequence of two or more tokens in it", show(file)));
	return sequences;
}

SequenceStream file_stream(const fs::path& file, uint64_t seed, int64_t vocab_size, int64_t max_positions,
                           const std::string& model) {
	auto sequences =
	    std::make_shared<std::vector<TrainingSequence>>(read_sequences(file, vocab_size, max_positions, model));
	// Each epoch a Fisher-Yates shuffle with counter-based draws, made when first needed.
	auto order = std::make_shared<std::vector<uint32_t>>();
	auto order_epoch = std::make_shared<uint64_t>(UINT64_MAX);
	return [sequences, order, order_epoch, seed](uint64_t index) {
		const uint64_t n = sequences->size(), epoch = index / n;
		if (*order_epoch != epoch) {
			order->resize(n);
			std::iota(order->begin(), order->end(), 0u);
			const uint64_t key = random_stream_key(seed, "epoch", epoch);
			for (uint64_t i = n - 1; i > 0; --i) {
				const auto j = static_cast<uint64_t>(random_uniform(key, i) * static_cast<double>(i + 1));
				std::swap((*order)[i], (*order)[std::min(j, i)]);
			}
			*order_epoch = epoch;
		}
		return (*sequences)[(*order)[index % n]];
	};
}

namespace {

// libtorch keys optimizer state by the parameter's TensorImpl: as a string in 1.x, a pointer in 2.x.
template <class StateMap> const torch::optim::AdamWParamState* adamw_state(StateMap& state, const at::Tensor& p) {
	using Key = typename std::decay_t<StateMap>::key_type;
	Key key;
	if constexpr (std::is_same_v<Key, std::string>)
		key = c10::guts::to_string(p.unsafeGetTensorImpl());
	else
		key = p.unsafeGetTensorImpl();
	const auto it = state.find(key);
	return it == state.end() ? nullptr : static_cast<const torch::optim::AdamWParamState*>(it->second.get());
}

void save_second_moments(torch::optim::AdamW& optimizer, const LlamaModel& model, const TrainOptions& o, int64_t steps,
                         const fs::path& dir) {
	std::vector<OutputTensorSpec> specs;
	std::vector<at::Tensor> values;
	for (const auto& [name, p] : model.parameters()) {
		const auto* state = adamw_state(optimizer.state(), p);
		values.push_back(state ? state->exp_avg_sq().contiguous() : at::zeros_like(p));
		specs.push_back({name, DType::F32, std::vector<uint64_t>(p.sizes().begin(), p.sizes().end())});
	}
	fs::create_directories(dir);
	// Marked as statistics, so that recipes can name the folder as a model's `stats` (ota, ffg).
	SafetensorsWriter writer(dir, specs, UINT64_MAX, {},
	                         {{"weld_stats", "exp_avg_sq"}, {"step", std::to_string(steps)}});
	for (size_t i = 0; i < values.size(); ++i)
		writer.write(i, {static_cast<const uint8_t*>(values[i].data_ptr()), values[i].nbytes()});
	writer.finish();
	nlohmann::ordered_json info = {{"optimizer", "adamw"},
	                               {"state", "exp_avg_sq"},
	                               {"step", steps},
	                               {"beta1", o.beta1},
	                               {"beta2", o.beta2},
	                               {"eps", o.eps},
	                               {"weight_decay", o.weight_decay}};
	write_text_file(dir / "optimizer.json", info.dump(2) + "\n");
}

// A LoRA-trained projection: the model's weight W (its gradient is taken as usual) is rewritten
// as frozen + scale * b a after each step; a and b are what the optimizer updates.
struct LoraWeight {
	at::Tensor weight, frozen, a, b;
};

bool is_projection(const std::string& name) {
	for (const char* proj : {".q_proj.weight", ".k_proj.weight", ".v_proj.weight", ".o_proj.weight",
	                         ".gate_proj.weight", ".up_proj.weight", ".down_proj.weight"})
		if (name.ends_with(proj)) return true;
	return false;
}

std::vector<LoraWeight> make_lora(LlamaModel& model, int64_t rank, uint64_t seed) {
	auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
	std::vector<LoraWeight> out;
	for (auto& [name, p] : model.parameters()) {
		if (!is_projection(name)) {
			p.requires_grad_(false);
			continue;
		}
		const int64_t rows = p.size(0), cols = p.size(1), r = std::min({rank, rows, cols});
		const double bound = 1.0 / std::sqrt(static_cast<double>(cols));
		auto a = at::empty({r, cols}, p.options().requires_grad(false)).uniform_(-bound, bound, gen);
		out.push_back(
		    {p, p.detach().clone(), a.requires_grad_(true), at::zeros({rows, r}, p.options()).requires_grad_(true)});
	}
	return out;
}

// The chain rule from dL/dW to the factors, then W's gradient is dropped.
void lora_gradients(std::vector<LoraWeight>& lora, double scale) {
	for (auto& l : lora) {
		const auto g = l.weight.grad();
		l.a.mutable_grad() = scale * at::matmul(l.b.detach().t(), g);
		l.b.mutable_grad() = scale * at::matmul(g, l.a.detach().t());
		l.weight.mutable_grad() = at::Tensor();
	}
}

void fold_lora(std::vector<LoraWeight>& lora, double scale) {
	const at::NoGradGuard no_grad;
	for (auto& l : lora)
		l.weight.copy_(l.frozen + scale * at::matmul(l.b, l.a));
}

void check_options(const TrainOptions& o) {
	if (o.steps <= 0 || o.batch <= 0) throw Error("--steps and --batch must be positive");
	if (!(o.lr > 0) || !(o.min_lr >= 0) || o.min_lr > o.lr) throw Error("need 0 <= --min-lr <= --lr and --lr > 0");
	if (o.warmup < 0 || o.warmup >= o.steps) throw Error("--warmup must be at least 0 and less than --steps");
	if (!(o.clip >= 0) || !(o.weight_decay >= 0)) throw Error("--clip and --weight-decay must not be negative");
	if (!(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1 && o.eps > 0))
		throw Error(fmt::format("--beta1 {}, --beta2 {}, --eps {}: AdamW needs 0 <= beta < 1 and eps > 0", o.beta1,
		                        o.beta2, o.eps));
	if (o.lora_rank < 0 || !(o.lora_alpha >= 0)) throw Error("--lora-rank and --lora-alpha must not be negative");
}

} // namespace

void train(const TrainJob& job, const TrainOptions& o, const std::function<void(const StepReport&)>& on_step) {
	check_options(o);
	if (job.tasks.empty() == job.data.empty()) throw Error("give either tasks or a data file to train on");
	if (job.save_optimizer && o.lora_rank > 0)
		throw Error("--save-optimizer and --lora-rank cannot be combined (the optimizer sees the LoRA factors, not the "
		            "weights)");
	// Taken before training, so that a refused output costs nothing; published only when complete.
	OutputFolder out(job.out, job.force);
	if (o.threads > 0) at::set_num_threads(o.threads);

	auto model = job.init.empty()
	                 ? LlamaModel::create(read_text_file(job.config_file), job.config_file.string(), job.seed)
	                 : LlamaModel::load(job.init, at::kFloat);
	const auto& config = model.config();
	const std::string model_name = job.init.string();
	const auto stream =
	    job.tasks.empty()
	        ? file_stream(job.data, job.seed, config.vocab_size, config.max_position_embeddings, model_name)
	        : task_stream(job.tasks, job.seed, config.vocab_size, model_name, job.easy_only);

	model.set_requires_grad(true);
	auto lora = o.lora_rank > 0 ? make_lora(model, o.lora_rank, job.seed) : std::vector<LoraWeight>{};
	const double lora_scale = o.lora_alpha > 0 ? o.lora_alpha / static_cast<double>(o.lora_rank) : 1.0;
	std::vector<at::Tensor> all, decay, no_decay;
	if (lora.empty()) {
		for (auto& [name, p] : model.parameters()) {
			all.push_back(p);
			(p.dim() >= 2 ? decay : no_decay).push_back(p);
		}
	} else {
		for (const auto& l : lora)
			all.insert(all.end(), {l.a, l.b});
		decay = all;
	}
	torch::optim::AdamWOptions defaults(o.lr);
	defaults.betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay);
	std::vector<torch::optim::OptimizerParamGroup> groups;
	groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(defaults));
	if (!no_decay.empty()) {
		auto plain = defaults;
		plain.weight_decay(0.0);
		groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(plain));
	}
	torch::optim::AdamW optimizer(std::move(groups), defaults);

	for (int64_t step = 0; step < o.steps; ++step) {
		StepReport report{step, 0, learning_rate(o, step), 0};
		for (auto& group : optimizer.param_groups())
			static_cast<torch::optim::AdamWOptions&>(group.options()).lr(report.lr);
		std::vector<TrainingSequence> batch;
		for (int64_t b = 0; b < o.batch; ++b)
			batch.push_back(stream(static_cast<uint64_t>(step * o.batch + b)));
		const auto loss = mean_target_loss(model, batch);
		optimizer.zero_grad();
		loss.backward();
		if (!lora.empty()) lora_gradients(lora, lora_scale);
		report.grad_norm =
		    torch::nn::utils::clip_grad_norm_(all, o.clip > 0 ? o.clip : std::numeric_limits<double>::infinity());
		optimizer.step();
		if (!lora.empty()) fold_lora(lora, lora_scale);
		report.loss = loss.item<double>();
		if (!std::isfinite(report.loss))
			throw Error(fmt::format("training diverged at step {} (loss {}); lower --lr", step, report.loss));
		if (on_step) on_step(report);
	}

	model.save(out.path());
	if (job.save_optimizer) save_second_moments(optimizer, model, o, o.steps, out.path() / "optimizer");
	out.publish();
}

at::Tensor mean_target_loss(const LlamaModel& model, const std::vector<TrainingSequence>& sequences) {
	// ids [batch, longest] right-padded with 0, and targets [batch, longest - 1] with -100
	// (ignored) wherever no loss is taken.
	std::vector<std::vector<int64_t>> rows;
	for (const auto& s : sequences)
		rows.push_back(s.ids);
	const auto ids = right_padded_ids(rows, 2);
	const auto B = ids.size(0), L = ids.size(1);
	auto targets = at::full({B, L - 1}, -100, at::TensorOptions().dtype(at::kLong));
	auto target = targets.accessor<int64_t, 2>();
	for (int64_t b = 0; b < B; ++b) {
		const auto& s = sequences[static_cast<size_t>(b)];
		for (size_t t = std::max<size_t>(s.loss_from, 1); t < s.ids.size(); ++t)
			target[b][static_cast<int64_t>(t) - 1] = s.ids[t];
	}
	const auto logits = model.forward(ids);
	return at::cross_entropy_loss(logits.slice(1, 0, L - 1).reshape({-1, logits.size(-1)}), targets.reshape({-1}), {},
	                              at::Reduction::Mean, -100);
}

} // namespace weld::nn
