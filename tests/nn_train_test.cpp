// Training: the schedule by hand, one AdamW step with clipping recomputed from its definition
// (gradients from the runtime, the optimizer's arithmetic here in float64), determinism, a model
// that learns, the data streams, and the errors of weld train.
#include "io/safetensors.h"
#include "nn/llama.h"
#include "nn/tasks.h"
#include "nn/tokenizer.h"
#include "nn/train.h"
#include "nn_test_util.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

namespace weld {
namespace {

namespace fs = std::filesystem;
using nn::LlamaModel;

const char* kTinyConfig = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 258, "hidden_size": 16,
  "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
  "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "tie_word_embeddings": false})";

using test::error_of;

// The tensors of a safetensors file as float64, by name.
std::map<std::string, at::Tensor> read_f32_file(const fs::path& file) {
	const SafetensorsFile f(file);
	std::map<std::string, at::Tensor> out;
	for (const auto& info : f.tensors()) {
		std::vector<int64_t> shape(info.shape.begin(), info.shape.end());
		auto t = at::empty(shape, at::kFloat);
		const auto bytes = f.data(info);
		std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
		out[info.name] = t.to(at::kDouble);
	}
	return out;
}

TEST(LearningRate, WarmupThenCosineToTheFloor) {
	nn::TrainOptions o;
	o.steps = 11;
	o.warmup = 2;
	o.lr = 1.0;
	o.min_lr = 0.2;
	EXPECT_DOUBLE_EQ(nn::learning_rate(o, 0), 0.5);
	EXPECT_DOUBLE_EQ(nn::learning_rate(o, 1), 1.0);
	EXPECT_DOUBLE_EQ(nn::learning_rate(o, 2), 1.0);                                        // cosine starts at the peak
	EXPECT_NEAR(nn::learning_rate(o, 6), 0.6, 1e-12);                                      // halfway: (1 + 0.2) / 2
	EXPECT_NEAR(nn::learning_rate(o, 4), 0.2 + 0.8 * (1 + std::cos(M_PI / 4)) / 2, 1e-12); // a quarter
	EXPECT_DOUBLE_EQ(nn::learning_rate(o, 10), 0.2);
}

class Train : public ::testing::Test {
protected:
	test::TempDir tmp;
	fs::path config() {
		test::write_file(tmp / "config.json", kTinyConfig);
		return tmp / "config.json";
	}
	nn::TrainJob job(const std::string& out) {
		nn::TrainJob j;
		j.config_file = config();
		j.out = tmp / out;
		j.tasks = {"reverse", "count"};
		j.seed = 5;
		return j;
	}
};

// One step, recomputed: gradients of the masked mean loss from the runtime, then clipping to
// the global norm and AdamW (decoupled decay on matrices only, bias-corrected moments) in float64.
TEST_F(Train, OneAdamWStepWithClippingMatchesItsDefinition) {
	nn::TrainOptions o;
	o.steps = 1;
	o.batch = 4;
	o.lr = 0.01;
	o.weight_decay = 0.1;
	o.clip = 1e-3; // far below the gradient's norm, so clipping acts
	auto j = job("trained");
	j.save_optimizer = true;
	double reported_norm = 0;
	nn::train(j, o, [&](const nn::StepReport& r) { reported_norm = r.grad_norm; });

	auto model = LlamaModel::create(kTinyConfig, "config", 5);
	const auto initial = [&] {
		std::map<std::string, at::Tensor> p;
		for (const auto& [name, t] : model.parameters())
			p[name] = t.detach().to(at::kDouble);
		return p;
	}();
	// The batch: BOS + prompt + answer of reverse 0, count 0, reverse 1, count 1; loss on answers.
	const nn::ByteTokenizer tokenizer(258, "m");
	model.set_requires_grad(true);
	at::Tensor total = at::zeros({}, at::kFloat);
	int64_t answer_tokens = 0;
	for (uint64_t i = 0; i < 4; ++i) {
		const auto task = i % 2 == 0 ? tasks::Task::reverse : tasks::Task::count;
		const auto e = tasks::make_training_example(task, 5, i / 2);
		const auto ids = tokenizer.encode(e.prompt + e.answer);
		const auto t = at::tensor(at::ArrayRef<int64_t>(ids), at::kLong).unsqueeze(0);
		const auto ll = nn::token_log_likelihoods(model.forward(t), t)[0];
		const auto n = static_cast<int64_t>(e.answer.size());
		total = total - ll.slice(0, ll.size(0) - n).sum();
		answer_tokens += n;
	}
	(total / static_cast<double>(answer_tokens)).backward();
	double norm_sq = 0;
	for (const auto& [name, p] : model.parameters())
		norm_sq += p.grad().to(at::kDouble).pow(2).sum().item<double>();
	const double norm = std::sqrt(norm_sq), scale = std::min(1.0, o.clip / (norm + 1e-6));
	EXPECT_NEAR(reported_norm, norm, 1e-4 * norm);

	const auto trained = read_f32_file(tmp / "trained" / "model.safetensors");
	const auto second = read_f32_file(tmp / "trained" / "optimizer" / "model.safetensors");
	ASSERT_EQ(trained.size(), model.parameters().size());
	for (const auto& [name, p] : model.parameters()) {
		const auto g = p.grad().to(at::kDouble) * scale;
		const auto m = (1 - o.beta1) * g, v = (1 - o.beta2) * g * g;
		const double decay = p.dim() >= 2 ? o.weight_decay : 0.0;
		const auto expected =
		    initial.at(name) * (1 - o.lr * decay) - o.lr * (m / (1 - o.beta1)) / ((v / (1 - o.beta2)).sqrt() + o.eps);
		EXPECT_LE((trained.at(name) - expected).abs().max().item<double>(), 1e-6) << name;
		EXPECT_LE((second.at(name) - v).abs().max().item<double>(), 1e-6 * v.abs().max().item<double>() + 1e-18)
		    << name;
	}
	EXPECT_NE(test::read_file(tmp / "trained" / "optimizer" / "optimizer.json").find("\"step\": 1"), std::string::npos);
	// Marked as statistics, so that ota and ffg recipes can name the folder.
	const SafetensorsFile moments(tmp / "trained" / "optimizer" / "model.safetensors");
	EXPECT_EQ(moments.metadata().size(), 3u); // format, weld_stats, step
	bool marked = false;
	for (const auto& [key, value] : moments.metadata())
		marked = marked || (key == "weld_stats" && value == "exp_avg_sq");
	EXPECT_TRUE(marked);
}

TEST_F(Train, SameSeedSameBytesOtherSeedOtherBytes) {
	nn::TrainOptions o;
	o.steps = 3;
	o.batch = 4;
	nn::train(job("a"), o, {});
	nn::train(job("b"), o, {});
	auto other = job("c");
	other.seed = 6;
	nn::train(other, o, {});
	const auto a = test::read_file(tmp / "a" / "model.safetensors");
	EXPECT_EQ(a, test::read_file(tmp / "b" / "model.safetensors"));
	EXPECT_NE(a, test::read_file(tmp / "c" / "model.safetensors"));
	EXPECT_EQ(test::read_file(tmp / "a" / "config.json"), kTinyConfig);
	EXPECT_FALSE(fs::exists(tmp / "a" / "optimizer"));
}

// LoRA: the saved model differs from the start only in the attention and MLP projections, each
// by a matrix of rank at most lora_rank, and the loss falls.
TEST_F(Train, LoraChangesOnlyProjectionsByLowRank) {
	nn::TrainOptions o;
	o.steps = 20;
	o.batch = 8;
	o.lr = 0.02;
	o.lora_rank = 2;
	o.lora_alpha = 4;
	std::vector<double> losses;
	nn::train(job("lora"), o, [&](const nn::StepReport& r) { losses.push_back(r.loss); });
	EXPECT_LT(losses.back(), losses.front());
	const auto start = LlamaModel::create(kTinyConfig, "config", 5);
	const auto trained = read_f32_file(tmp / "lora" / "model.safetensors");
	int projections = 0;
	for (const auto& [name, p] : start.parameters()) {
		const auto tau = trained.at(name) - p.to(at::kDouble);
		if (name.find("_proj.weight") == std::string::npos) {
			EXPECT_EQ(tau.abs().max().item<double>(), 0.0) << name;
			continue;
		}
		++projections;
		const auto sv = at::linalg_svdvals(tau);
		EXPECT_GT(sv[0].item<double>(), 1e-4) << name;
		EXPECT_LT(sv[2].item<double>(), 1e-5 * sv[0].item<double>()) << name; // float32 folding noise
	}
	EXPECT_EQ(projections, 7);

	auto with_optimizer = job("lora-optimizer");
	with_optimizer.save_optimizer = true;
	EXPECT_NE(error_of([&] { nn::train(with_optimizer, o, {}); }).find("--lora-rank"), std::string::npos);
	EXPECT_FALSE(fs::exists(with_optimizer.out));
	o.lora_rank = -1;
	EXPECT_NE(error_of([&] { nn::train(job("negative"), o, {}); }).find("--lora-rank"), std::string::npos);
	EXPECT_FALSE(fs::exists(tmp / "negative"));
}

// A text memorized: perplexity on it falls from about the vocabulary's size to near 1.
TEST_F(Train, LearnsText) {
	test::write_file(tmp / "text.txt", "abcabcabcabcabcabc\nabcabcabcabc\n");
	auto j = job("text-model");
	j.tasks.clear();
	j.data = tmp / "text.txt";
	nn::TrainOptions o;
	o.steps = 60;
	o.batch = 2;
	o.lr = 1e-2;
	o.min_lr = 1e-3;
	std::vector<double> losses;
	nn::train(j, o, [&](const nn::StepReport& r) { losses.push_back(r.loss); });
	EXPECT_GT(losses.front(), 5.0);
	EXPECT_LT(losses.back(), 0.3);
	// The loaded model agrees: the next letter after "ab" is c.
	const auto model = LlamaModel::load(tmp / "text-model");
	const at::NoGradGuard no_grad;
	const auto logits = model.forward(at::tensor({int64_t{256}, int64_t{'a'}, int64_t{'b'}}, at::kLong));
	EXPECT_EQ(logits[0][-1].argmax().item<int64_t>(), 'c');
}

TEST_F(Train, FileStreamVisitsEverySequenceOncePerEpoch) {
	test::write_file(tmp / "qa.jsonl", "{\"prompt\": \"p1=\", \"answer\": \"a\\n\"}\n{\"prompt\": \"p2=\", \"answer\": "
	                                   "\"bb\\n\"}\n{\"prompt\": \"p3=\", \"answer\": \"c\\n\"}\n");
	const auto stream = nn::file_stream(tmp / "qa.jsonl", 9, 258, 32, "");
	for (uint64_t epoch = 0; epoch < 3; ++epoch) {
		std::set<std::vector<int64_t>> seen;
		for (uint64_t i = 0; i < 3; ++i) {
			const auto s = stream(epoch * 3 + i);
			EXPECT_EQ(s.ids.front(), nn::ByteTokenizer::kBos);
			EXPECT_EQ(s.ids.size() - s.loss_from, s.ids[2] == '2' ? 3u : 2u); // the loss covers the answer
			seen.insert(s.ids);
		}
		EXPECT_EQ(seen.size(), 3u);
	}
}

TEST_F(Train, ErrorsNameTheProblem) {
	nn::TrainOptions o;
	o.steps = 1;
	o.batch = 1;
	nn::train(job("exists"), o, {});
	EXPECT_NE(error_of([&] { nn::train(job("exists"), o, {}); }).find("already exists (use --force"),
	          std::string::npos);
	auto forced = job("exists");
	forced.force = true;
	EXPECT_EQ(error_of([&] { nn::train(forced, o, {}); }), "<no error>");
	auto bad_task = job("x");
	bad_task.tasks = {"multiplication"};
	EXPECT_NE(error_of([&] { nn::train(bad_task, o, {}); }).find("unknown task 'multiplication'"), std::string::npos);
	test::write_file(tmp / "gpt2.json", R"({"architectures": ["GPT2LMHeadModel"]})");
	auto gpt2 = job("y");
	gpt2.config_file = tmp / "gpt2.json";
	EXPECT_NE(error_of([&] { nn::train(gpt2, o, {}); }).find("architecture 'GPT2LMHeadModel' is not supported"),
	          std::string::npos);
	auto bad_eps = o;
	bad_eps.eps = 0;
	EXPECT_NE(error_of([&] { nn::train(job("x"), bad_eps, {}); }).find("--eps 0: AdamW needs"), std::string::npos);
	o.warmup = 1;
	EXPECT_NE(error_of([&] { nn::train(job("z"), o, {}); }).find("--warmup"), std::string::npos);
	EXPECT_FALSE(fs::exists(tmp / "x"));
	EXPECT_FALSE(fs::exists(tmp / "y"));
	for (const auto& entry : fs::directory_iterator(tmp.path())) // no temporary folder left behind
		EXPECT_NE(entry.path().filename().string()[0], '.') << entry.path();
	EXPECT_NE(error_of([&] {
		          o.warmup = 0;
		          nn::train(job("no-such-parent/model"), o, {});
	          }).find("parent folder does not exist"),
	          std::string::npos);
}

} // namespace
} // namespace weld

namespace weld {
namespace {

// weld train and weld eval --tasks through the weld binary (which hands over to weld-torch).
TEST(TrainCommand, TrainsEvaluatesAndExplains) {
	test::TempDir tmp;
	test::write_file(tmp / "config.json", kTinyConfig);
	const auto out = (tmp / "model").string();
	std::string stdout_text, err;
	ASSERT_EQ(test::run_weld("train " + out + " --config " + (tmp / "config.json").string() +
	                             " --tasks reverse --steps 2 --batch 2 --log-every 1 --save-optimizer",
	                         &err, &stdout_text),
	          0)
	    << err;
	EXPECT_NE(stdout_text.find("step 2/2 loss"), std::string::npos) << stdout_text;
	EXPECT_TRUE(std::filesystem::exists(tmp / "model" / "optimizer" / "model.safetensors"));

	ASSERT_EQ(test::run_weld("eval " + out + " --tasks reverse,count --held-out 5 --json", &err, &stdout_text), 0)
	    << err;
	const auto report = nlohmann::json::parse(stdout_text);
	EXPECT_EQ(report["n"], 10);
	EXPECT_EQ(report["tasks"]["reverse"]["n"], 5);
	EXPECT_TRUE(report["tasks"].contains("count"));

	EXPECT_EQ(test::run_weld("train --help", &err, &stdout_text), 0);
	EXPECT_NE(stdout_text.find("--save-optimizer"), std::string::npos) << stdout_text;
	EXPECT_EQ(test::run_weld("eval " + out + " --tasks nope", &err), 1);
	EXPECT_NE(err.find("unknown task 'nope'"), std::string::npos) << err;
	EXPECT_NE(test::run_weld("eval " + out, &err), 0);
	EXPECT_NE(err.find("--data or --tasks"), std::string::npos) << err;
	EXPECT_EQ(test::run_weld("train " + out + " --config " + (tmp / "config.json").string() + " --tasks reverse", &err),
	          1);
	EXPECT_NE(err.find("already exists"), std::string::npos) << err;
}

} // namespace
} // namespace weld
