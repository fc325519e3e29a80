#include "learned/twin.h"

#include "io/model.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "methods/method.h"
#include "nn/train.h"
#include "nn/twin.h"
#include "stats/statistics.h"
#include "util/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace weld::learned {
namespace fs = std::filesystem;

namespace {

constexpr int64_t kRouterBatch = 256;

std::vector<uint64_t> shape_of(const at::Tensor& t) {
	return {t.sizes().begin(), t.sizes().end()};
}

int64_t rank_for(const at::Tensor& t, double density) {
	if (t.dim() != 2) return 0;
	const int64_t full = std::min(t.size(0), t.size(1));
	return std::clamp(static_cast<int64_t>(std::floor(density * static_cast<double>(full))), int64_t{1}, full);
}

// PyTorch's nn.Linear initialization: weight and bias from U(-1/sqrt(in), 1/sqrt(in)).
nn::TwinRouter init_router(const std::vector<int64_t>& sizes, at::Generator& gen) {
	nn::TwinRouter router;
	const auto opts = at::TensorOptions().dtype(at::kFloat);
	for (size_t l = 0; l + 1 < sizes.size(); ++l) {
		const double bound = 1.0 / std::sqrt(static_cast<double>(sizes[l]));
		router.weights.push_back((at::rand({sizes[l + 1], sizes[l]}, gen, opts) * 2 - 1) * bound);
		router.biases.push_back((at::rand({sizes[l + 1]}, gen, opts) * 2 - 1) * bound);
	}
	return router;
}

TwinReport train_router(nn::TwinRouter& router, const at::Tensor& features, const at::Tensor& labels,
                        const TwinOptions& o, at::Generator& gen,
                        const std::function<void(const TwinEpoch&)>& on_epoch) {
	std::vector<at::Tensor> params;
	for (size_t l = 0; l < router.weights.size(); ++l) {
		params.push_back(router.weights[l].requires_grad_(true));
		params.push_back(router.biases[l].requires_grad_(true));
	}
	torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(o.router_lr).weight_decay(0));
	const int64_t n = features.size(0);
	for (int64_t epoch = 0; epoch < o.router_epochs; ++epoch) {
		const auto order = at::randperm(n, gen, at::TensorOptions().dtype(at::kLong));
		double sum = 0;
		int64_t batches = 0;
		for (int64_t first = 0; first < n; first += kRouterBatch) {
			const auto index = order.slice(0, first, std::min(n, first + kRouterBatch));
			optimizer.zero_grad();
			const auto loss = at::nll_loss(at::log_softmax(router.forward(features.index_select(0, index)), 1),
			                               labels.index_select(0, index));
			loss.backward();
			optimizer.step();
			sum += loss.item<double>();
			++batches;
		}
		if (on_epoch) on_epoch({epoch, sum / static_cast<double>(batches)});
	}
	const at::NoGradGuard no_grad;
	for (size_t l = 0; l < router.weights.size(); ++l) {
		router.weights[l] = router.weights[l].detach();
		router.biases[l] = router.biases[l].detach();
	}
	const auto logits = router.forward(features);
	TwinReport report;
	report.prompts = static_cast<size_t>(n);
	report.loss = at::nll_loss(at::log_softmax(logits, 1), labels).item<double>();
	report.accuracy = logits.argmax(1).eq(labels).to(at::kDouble).mean().item<double>();
	return report;
}

// twin.safetensors, written through SafetensorsWriter (which names a single file
// model.safetensors) in a folder of its own, then moved beside the shared model.
class FactorWriter {
	static fs::path created(const fs::path& dir) {
		fs::create_directories(dir);
		return dir;
	}

public:
	FactorWriter(const fs::path& dir, std::vector<OutputTensorSpec> specs)
	    : dir_(dir), staging_(dir / ".twin-factors"), writer_(created(staging_), std::move(specs), UINT64_MAX) {}
	void write(size_t index, const at::Tensor& t) {
		const auto c = t.detach().to(at::kFloat).contiguous();
		writer_.write(index, {static_cast<const uint8_t*>(c.data_ptr()), c.nbytes()});
	}
	void finish() {
		writer_.finish();
		fs::rename(staging_ / "model.safetensors", dir_ / "twin.safetensors");
		fs::remove_all(staging_);
	}

private:
	fs::path dir_, staging_;
	SafetensorsWriter writer_;
};

} // namespace

std::vector<std::vector<int64_t>> twin_router_prompts(const fs::path& file, const nn::LlamaConfig& config,
                                                      const fs::path& model_dir) {
	std::vector<std::vector<int64_t>> prompts;
	for (const auto& s :
	     nn::read_sequences(file, config.vocab_size, config.max_position_embeddings, model_dir.string())) {
		const size_t end = s.loss_from > 1 ? s.loss_from : s.ids.size();
		prompts.emplace_back(s.ids.begin(), s.ids.begin() + static_cast<std::ptrdiff_t>(end));
	}
	return prompts;
}

TwinReport build_twin(TaskVectorModel& tv, const std::vector<std::string>& expert_names,
                      const std::vector<fs::path>& data, const fs::path& base_dir, const TwinOptions& o,
                      const fs::path& dir, const std::function<void(const TwinEpoch&)>& on_epoch) {
	const size_t k = tv.experts();
	if (expert_names.size() != k || data.size() != k)
		throw Error(fmt::format("twin merging: {} experts, but {} names and {} data files", k, expert_names.size(),
		                        data.size()));
	if (!(o.density > 0 && o.density <= 1))
		throw Error(fmt::format("twin merging: density {:g} is outside (0, 1]", o.density));
	if (!(o.router_lr > 0)) throw Error(fmt::format("twin merging: router_lr {:g} must be positive", o.router_lr));
	if (o.router_epochs < 0) throw Error("twin merging: router_epochs must not be negative");
	at::set_num_threads(1); // the same bytes every run

	const auto& config = tv.model().config();
	std::vector<std::vector<int64_t>> prompts;
	std::vector<int64_t> label_values;
	for (size_t i = 0; i < k; ++i)
		for (auto& p : twin_router_prompts(data[i], config, base_dir)) {
			prompts.push_back(std::move(p));
			label_values.push_back(static_cast<int64_t>(i));
		}

	const at::NoGradGuard no_grad;
	const auto& names = tv.names();
	std::map<std::string, at::Tensor> shared;
	for (size_t n = 0; n < names.size(); ++n) {
		auto sum = at::zeros_like(tv.delta(0, n));
		for (size_t i = 0; i < k; ++i)
			sum += tv.delta(i, n);
		shared[names[n]] = tv.base(n) + sum * o.lambda;
	}
	tv.model().replace_parameters(shared);
	tv.model().save(dir);
	// The shared model as stored (the base's dtypes): the exclusive parts are taken against it.
	const auto stored = nn::LlamaModel::load(dir, at::kFloat);

	// Router.
	auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
	const int64_t h = config.hidden_size, kk = static_cast<int64_t>(k);
	const std::vector<int64_t> sizes{h, 2 * h, 2 * h, kk};
	auto router = init_router(sizes, gen);
	const auto features = nn::mean_final_hidden(stored, prompts);
	const auto labels = at::tensor(at::ArrayRef<int64_t>(label_values), at::TensorOptions().dtype(at::kLong));
	TwinReport report;
	{
		const at::AutoGradMode grad(true);
		report = train_router(router, features, labels, o, gen, on_epoch);
	}

	// Exclusive factors, streamed into twin.safetensors.
	std::vector<OutputTensorSpec> specs;
	nlohmann::json ranks = nlohmann::json::object();
	std::vector<int64_t> rank(names.size());
	for (size_t n = 0; n < names.size(); ++n) {
		rank[n] = rank_for(tv.base(n), o.density);
		ranks[names[n]] = rank[n];
	}
	for (size_t i = 0; i < k; ++i)
		for (size_t n = 0; n < names.size(); ++n) {
			const auto& t = tv.base(n);
			if (rank[n] > 0) {
				specs.push_back({fmt::format("{}.twin{}.u", names[n], i),
				                 DType::F32,
				                 {static_cast<uint64_t>(t.size(0)), static_cast<uint64_t>(rank[n])}});
				specs.push_back({fmt::format("{}.twin{}.v", names[n], i),
				                 DType::F32,
				                 {static_cast<uint64_t>(rank[n]), static_cast<uint64_t>(t.size(1))}});
			} else {
				specs.push_back({fmt::format("{}.twin{}.delta", names[n], i), DType::F32, shape_of(t)});
			}
		}
	const size_t router_first = specs.size();
	for (size_t l = 0; l < router.weights.size(); ++l) {
		specs.push_back({fmt::format("router.{}.weight", l), DType::F32, shape_of(router.weights[l])});
		specs.push_back({fmt::format("router.{}.bias", l), DType::F32, shape_of(router.biases[l])});
	}
	FactorWriter writer(dir, specs);
	size_t next = 0;
	for (size_t i = 0; i < k; ++i)
		for (size_t n = 0; n < names.size(); ++n) {
			const auto d = (tv.base(n).to(at::kDouble) + tv.delta(i, n).to(at::kDouble)) -
			               stored.parameter(names[n]).to(at::kDouble);
			if (rank[n] == 0) {
				writer.write(next++, d);
				continue;
			}
			const auto [u, s, vh] = at::linalg_svd(d, false);
			const auto r = rank[n];
			writer.write(next++, u.slice(1, 0, r) * s.slice(0, 0, r));
			writer.write(next++, vh.slice(0, 0, r));
		}
	for (size_t l = 0; l < router.weights.size(); ++l) {
		writer.write(router_first + 2 * l, router.weights[l]);
		writer.write(router_first + 2 * l + 1, router.biases[l]);
	}
	writer.finish();

	nlohmann::json j;
	j["format"] = "weld-twin";
	j["version"] = 1;
	j["experts"] = k;
	j["expert_names"] = expert_names;
	j["ranks"] = ranks;
	j["router_layers"] = sizes;
	j["router"] = "Linear, LeakyReLU(0.01) between layers; softmax over the experts";
	j["pooling"] = "mean of the final hidden state over the prompt";
	j["lambda"] = o.lambda;
	j["density"] = o.density;
	j["router_lr"] = o.router_lr;
	j["router_epochs"] = o.router_epochs;
	j["seed"] = o.seed;
	write_text_file(dir / "twin.json", j.dump(2) + "\n");
	return report;
}

std::string run_twin(const Recipe& recipe, double lambda, double density, double router_lr, int64_t router_epochs,
                     uint64_t seed, const fs::path& out, bool force, bool quiet) {
	const auto& method = recipe.merge_method;
	if (!recipe.base_model) throw Error(fmt::format("recipe: method '{}' needs a base_model", method));
	if (recipe.models.empty())
		throw Error(fmt::format("recipe: method '{}' takes models:, not slices: or modules:", method));
	std::vector<std::string> experts;
	std::vector<fs::path> expert_dirs, data;
	std::string provenance;
	for (const auto& m : recipe.models) {
		if (m.model == *recipe.base_model || std::find(experts.begin(), experts.end(), m.model) != experts.end())
			continue;
		const auto where = fmt::format("model '{}'", m.model);
		const auto file = text_setting(m.parameters, "data", where);
		if (!file) throw Error(fmt::format("recipe: {}: method '{}' needs its data: file", where, method));
		experts.push_back(m.model);
		data.emplace_back(*file);
	}
	if (experts.empty()) throw Error(fmt::format("recipe: method '{}' needs a model besides the base", method));
	for (size_t i = 0; i < experts.size(); ++i) {
		if (!fs::is_regular_file(data[i])) throw Error(fmt::format("{}: no such file", data[i].string()));
		expert_dirs.push_back(resolve_model_reference(experts[i]));
		provenance += fmt::format("# {}: {} (sha256 {})\n", experts[i], data[i].string(), stats::file_sha256(data[i]));
	}
	const auto base_dir = resolve_model_reference(*recipe.base_model);
	TaskVectorModel tv(base_dir, expert_dirs, at::kFloat);
	TwinOptions o{lambda, density, router_lr, router_epochs, seed};
	OutputFolder folder(out, force);
	const auto report = build_twin(tv, experts, data, base_dir, o, folder.path(), [&](const TwinEpoch& e) {
		if (!quiet && ((e.epoch + 1) % 10 == 0 || e.epoch + 1 == router_epochs))
			std::fprintf(stderr, "weld: %s router epoch %lld/%lld loss %.4f\n", method.c_str(),
			             static_cast<long long>(e.epoch + 1), static_cast<long long>(router_epochs), e.loss);
	});
	const auto text =
	    fmt::format("# Merged by weld's {} (lambda {:g}, density {:g}, router_lr {:g}, router_epochs {}, seed {}); the "
	                "router routes {:.2f}% of its {} prompts to their own model. Data files:\n",
	                method, lambda, density, router_lr, router_epochs, seed, 100 * report.accuracy, report.prompts) +
	    provenance + recipe.text;
	write_text_file(folder.path() / "weld_recipe.yml", text);
	folder.publish();
	return text;
}

} // namespace weld::learned
