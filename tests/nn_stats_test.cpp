// weld stats: the diagonal Fisher against central finite differences of each token's
// log-likelihood in float64 (an independent gradient), the Gram matrices and activation moments
// of layer 0 against its inputs recomputed here (embedding, RMSNorm, projection), the metadata,
// and the errors (empty or malformed data, a model the runtime cannot run, an existing output).
#include "io/safetensors.h"
#include "nn/llama.h"
#include "nn/train.h"
#include "nn_test_util.h"
#include "stats/statistics.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <cstring>

namespace weld {
namespace {

namespace fs = std::filesystem;
using nn::LlamaModel;
using test::error_of;

const char* kStatsConfig = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 258, "hidden_size": 8,
  "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
  "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "initializer_range": 0.3})";

std::map<std::string, at::Tensor> read_stats(const fs::path& dir,
                                             std::map<std::string, std::string>* metadata = nullptr) {
	const SafetensorsFile f(dir / "model.safetensors");
	std::map<std::string, at::Tensor> out;
	for (const auto& info : f.tensors()) {
		auto t = at::empty(std::vector<int64_t>(info.shape.begin(), info.shape.end()), at::kFloat);
		std::memcpy(t.data_ptr(), f.data(info).data(), info.nbytes());
		out[info.name] = t.to(at::kDouble);
	}
	if (metadata)
		for (const auto& [k, v] : f.metadata())
			(*metadata)[k] = v;
	return out;
}

class Stats : public ::testing::Test {
protected:
	void SetUp() override {
		LlamaModel::create(kStatsConfig, "tiny", 3).save(tmp / "model");
		test::write_file(tmp / "data.jsonl", "{\"prompt\": \"ab=\", \"answer\": \"ba\\n\"}\n"
		                                     "{\"prompt\": \"xyz=\", \"answer\": \"z\\n\"}\n");
	}
	stats::StatsSummary run(stats::Kind kind, const std::string& out, int64_t batch = 8) {
		stats::StatsJob job;
		job.model = tmp / "model";
		job.data = tmp / "data.jsonl";
		job.out = tmp / out;
		job.kind = kind;
		job.batch_size = batch;
		return stats::compute_statistics(job, {});
	}
	test::TempDir tmp;
};

// And the gradient kind: the mean of the same per-token gradients of -log p (batches of 2 and 1 agree).
TEST_F(Stats, FisherIsTheMeanSquaredTokenGradient) {
	const auto summary = run(stats::Kind::Fisher, "fisher");
	run(stats::Kind::Gradient, "gradient", 2);
	run(stats::Kind::Gradient, "gradient1", 1);
	std::map<std::string, std::string> meta, gradient_meta;
	const auto fisher = read_stats(tmp / "fisher", &meta);
	const auto gradient = read_stats(tmp / "gradient", &gradient_meta), gradient1 = read_stats(tmp / "gradient1");
	EXPECT_EQ(gradient_meta["weld_stats"], "gradient");
	EXPECT_EQ(gradient_meta["tokens"], "5");
	EXPECT_EQ(summary.tokens, 5u); // "ba\n" and "z\n": the answer tokens
	EXPECT_EQ(meta["weld_stats"], "fisher");
	EXPECT_EQ(meta["tokens"], "5");
	EXPECT_EQ(meta["data_sha256"], stats::file_sha256(tmp / "data.jsonl"));
	EXPECT_EQ(meta["data_sha256"].size(), 64u);

	auto model = LlamaModel::load(tmp / "model", at::kDouble);
	const auto sequences = nn::read_sequences(tmp / "data.jsonl", 258, 32, "");
	// Sum over scored tokens of log p(token), for the sequences one by one.
	auto token_lls = [&] {
		std::vector<double> out;
		for (const auto& s : sequences) {
			const auto ids = at::tensor(s.ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
			const auto ll = nn::token_log_likelihoods(model.forward(ids), ids);
			for (size_t t = s.loss_from; t < s.ids.size(); ++t)
				out.push_back(ll[0][static_cast<int64_t>(t) - 1].item<double>());
		}
		return out;
	};
	const double h = 1e-6;
	int checked = 0;
	for (const auto* name :
	     {"lm_head.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
	      "model.layers.0.input_layernorm.weight", "model.embed_tokens.weight"}) {
		auto p = model.parameters().at(name).view({-1});
		for (int64_t i : {int64_t{0}, p.numel() / 3, p.numel() - 1}) {
			const double v = p[i].item<double>();
			p[i] = v + h;
			const auto up = token_lls();
			p[i] = v - h;
			const auto down = token_lls();
			p[i] = v;
			double mean_sq = 0, mean = 0;
			for (size_t t = 0; t < up.size(); ++t) {
				mean_sq += std::pow((up[t] - down[t]) / (2 * h), 2) / static_cast<double>(up.size());
				mean -= (up[t] - down[t]) / (2 * h) / static_cast<double>(up.size());
			}
			const double got = fisher.at(name).view({-1})[i].item<double>();
			EXPECT_NEAR(got, mean_sq, 1e-3 * mean_sq + 1e-9) << name << "[" << i << "]";
			const double g = gradient.at(name).view({-1})[i].item<double>();
			EXPECT_NEAR(g, mean, 1e-3 * std::abs(mean) + 1e-6) << name << "[" << i << "]";
			EXPECT_NEAR(gradient1.at(name).view({-1})[i].item<double>(), g, 1e-6) << name << "[" << i << "]";
			checked += mean_sq > 1e-8;
		}
	}
	EXPECT_GE(checked, 8); // most of the checked elements have a gradient at all
	EXPECT_EQ(fisher.size(), model.parameters().size());
}

// Layer 0's q/k/v and gate/up read RMSNorm(embedding) and its MLP input; q/k/v are checked by hand.
TEST_F(Stats, GramAndActivationsOfLayerZeroByHand) {
	const auto summary = run(stats::Kind::Gram, "gram", 1); // batches of one and of two give the same
	run(stats::Kind::Gram, "gram2", 2);
	run(stats::Kind::Activations, "act");
	EXPECT_EQ(summary.tokens, 14u); // BOS + 6 bytes, twice
	const auto gram = read_stats(tmp / "gram"), gram2 = read_stats(tmp / "gram2"), act = read_stats(tmp / "act");

	auto model = LlamaModel::load(tmp / "model", at::kDouble);
	std::vector<at::Tensor> rows;
	for (const auto& s : nn::read_sequences(tmp / "data.jsonl", 258, 32, "")) {
		const auto x = model.parameter("model.embed_tokens.weight")
		                   .index_select(0, at::tensor(s.ids, at::TensorOptions().dtype(at::kLong)));
		const auto normed =
		    x / at::sqrt(x.pow(2).mean(-1, true) + 1e-5) * model.parameter("model.layers.0.input_layernorm.weight");
		rows.push_back(normed);
	}
	const auto X = at::cat(rows, 0); // [14, 8]
	const auto expected = at::matmul(X.t(), X) / 14.0;
	for (const auto* name : {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
	                         "model.layers.0.self_attn.v_proj.weight"}) {
		EXPECT_TRUE(at::allclose(gram.at(name), expected, 1e-5, 1e-7)) << name;
		EXPECT_TRUE(at::allclose(gram2.at(name), expected, 1e-5, 1e-7)) << name;
	}
	for (const auto* name :
	     {"model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
	      "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight", "lm_head.weight"}) {
		ASSERT_TRUE(gram.count(name)) << name;
		EXPECT_TRUE(at::allclose(gram.at(name), gram.at(name).t())) << name; // symmetric
		EXPECT_TRUE(at::allclose(gram.at(name), gram2.at(name), 1e-5, 1e-7)) << name;
	}
	EXPECT_TRUE(
	    at::equal(gram.at("model.layers.0.mlp.gate_proj.weight"), gram.at("model.layers.0.mlp.up_proj.weight")));
	EXPECT_EQ(gram.size(), 8u); // seven projections and lm_head

	const auto q = at::matmul(X, model.parameter("model.layers.0.self_attn.q_proj.weight").t());
	const std::string m = "model.layers.0.self_attn.q_proj.";
	EXPECT_TRUE(at::allclose(act.at(m + "input_mean"), X.mean(0), 1e-5, 1e-7));
	EXPECT_TRUE(at::allclose(act.at(m + "input_sq_mean"), X.pow(2).mean(0), 1e-5, 1e-7));
	EXPECT_TRUE(at::allclose(act.at(m + "output_mean"), q.mean(0), 1e-5, 1e-7));
	EXPECT_TRUE(at::allclose(act.at(m + "output_sq_mean"), q.pow(2).mean(0), 1e-5, 1e-7));
	EXPECT_EQ(act.size(), 8u * 4);
}

TEST_F(Stats, MaxTokensStopsAfterTheSequenceThatReachesIt) {
	stats::StatsJob job;
	job.model = tmp / "model";
	job.data = tmp / "data.jsonl";
	job.out = tmp / "few";
	job.kind = stats::Kind::Gram;
	job.max_tokens = 3;
	EXPECT_EQ(stats::compute_statistics(job, {}).tokens, 7u); // the first sequence, whole
}

TEST_F(Stats, BadInputIsOneClearErrorAndNothingWritten) {
	stats::StatsJob job;
	job.model = tmp / "model";
	job.kind = stats::Kind::Fisher;
	job.out = tmp / "out";
	test::write_file(tmp / "empty.txt", "");
	job.data = tmp / "empty.txt";
	EXPECT_NE(error_of([&] { stats::compute_statistics(job, {}); }).find("empty.txt: no sequence"), std::string::npos);
	test::write_file(tmp / "bad.jsonl", "{\"prompt\": \"a\", \"answer\": \n");
	job.data = tmp / "bad.jsonl";
	EXPECT_NE(error_of([&] { stats::compute_statistics(job, {}); }).find("bad.jsonl"), std::string::npos);
	job.data = tmp / "missing.jsonl";
	EXPECT_NE(error_of([&] { stats::compute_statistics(job, {}); }).find("missing.jsonl: no such file"),
	          std::string::npos);
	fs::copy(tmp / "model", tmp / "gpt2");
	test::edit_config(tmp / "gpt2", {{"architectures", {"GPT2LMHeadModel"}}});
	job.model = tmp / "gpt2";
	job.data = tmp / "data.jsonl";
	EXPECT_NE(error_of([&] { stats::compute_statistics(job, {}); }).find("'GPT2LMHeadModel' is not supported"),
	          std::string::npos);
	EXPECT_FALSE(fs::exists(tmp / "out"));
	job.model = tmp / "model";
	stats::compute_statistics(job, {});
	EXPECT_NE(error_of([&] { stats::compute_statistics(job, {}); }).find("already exists (use --force"),
	          std::string::npos);
	EXPECT_NE(error_of([] { stats::parse_kind("hessian"); }).find("valid: fisher, gram, activations"),
	          std::string::npos);
	for (const auto& entry : fs::directory_iterator(tmp.path())) // no temporary folder left behind
		EXPECT_NE(entry.path().filename().string()[0], '.') << entry.path();
}

} // namespace
} // namespace weld

namespace weld {
namespace {

// weld merge with per-model `data:`: the statistics are computed on the fly, cached beside the
// output, and give the same bytes as the same merge from `weld stats` folders.
TEST(StatsInRecipes, DataFilesGiveTheSameMergeAsStatsFolders) {
	test::TempDir tmp;
	nn::LlamaModel::create(kStatsConfig, "tiny", 3).save(tmp / "a");
	nn::LlamaModel::create(kStatsConfig, "tiny", 4).save(tmp / "b");
	test::write_file(tmp / "da.jsonl", "{\"prompt\": \"ab=\", \"answer\": \"ba\\n\"}\n");
	test::write_file(tmp / "db.txt", "hello there\nxyz\n");
	const test::WorkingDir here(tmp.path());
	std::string err;
	ASSERT_EQ(test::run_weld("stats a --data da.jsonl --kind gram -o ga", &err), 0) << err;
	ASSERT_EQ(test::run_weld("stats b --data db.txt --kind gram -o gb", &err), 0) << err;
	test::write_file(tmp / "stats.yml", "merge_method: regmean\nmodels:\n  - model: a\n    parameters: {stats: ga}\n"
	                                    "  - model: b\n    parameters: {stats: gb}\n");
	test::write_file(tmp / "data.yml",
	                 "merge_method: regmean\nmodels:\n  - model: a\n    parameters: {data: da.jsonl}\n"
	                 "  - model: b\n    parameters: {data: db.txt}\n");
	ASSERT_EQ(test::run_weld("merge stats.yml from-stats", &err), 0) << err;
	ASSERT_EQ(test::run_weld("merge data.yml from-data", &err), 0) << err;
	EXPECT_NE(err.find("computing gram statistics of a on da.jsonl"), std::string::npos) << err;
	EXPECT_EQ(test::read_file(tmp / "from-data" / "model.safetensors"),
	          test::read_file(tmp / "from-stats" / "model.safetensors"));
	// The cache: two folders beside the output, reused by the next run.
	size_t cached = 0;
	for (const auto& entry : fs::directory_iterator(tmp / ".from-data.weld-stats"))
		cached += entry.path().extension() == ".gram";
	EXPECT_EQ(cached, 2u);
	ASSERT_EQ(test::run_weld("merge data.yml from-data --force", &err), 0) << err;
	EXPECT_EQ(err.find("computing"), std::string::npos) << err;
	// Both, or a data file that is not there: one clear error, nothing written.
	test::write_file(tmp / "both.yml",
	                 "merge_method: regmean\nmodels:\n  - model: a\n    parameters: {stats: ga, data: "
	                 "da.jsonl}\n  - model: b\n    parameters: {stats: gb}\n");
	EXPECT_EQ(test::run_weld("merge both.yml out-both", &err), 1);
	EXPECT_NE(err.find("give stats or data, not both"), std::string::npos) << err;
	test::write_file(tmp / "missing.yml", "merge_method: regmean\nmodels:\n  - model: a\n    parameters: {data: "
	                                      "nope.jsonl}\n  - model: b\n    parameters: {stats: gb}\n");
	EXPECT_EQ(test::run_weld("merge missing.yml out-missing", &err), 1);
	EXPECT_NE(err.find("data file 'nope.jsonl' of model"), std::string::npos) << err;
	EXPECT_EQ(test::run_weld("merge data.yml out-dry --dry-run", &err), 1);
	EXPECT_NE(err.find("not in --dry-run or a distributed merge"), std::string::npos) << err;
	EXPECT_FALSE(fs::exists(tmp / "out-both"));
	EXPECT_FALSE(fs::exists(tmp / "out-missing"));
}

} // namespace
} // namespace weld
