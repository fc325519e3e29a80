#include "stats/statistics.h"

#include "io/output_folder.h"
#include "io/safetensors.h"
#include "nn/llama.h"
#include "nn/train.h"
#include "util/error.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <torch/csrc/autograd/autograd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <set>

namespace weld::stats {
namespace fs = std::filesystem;

namespace {

struct Batch {
	at::Tensor ids;   // [B, L] right-padded with 0
	at::Tensor valid; // [B, L] bool: real tokens
	std::vector<nn::TrainingSequence> sequences;
};

Batch make_batch(const std::vector<nn::TrainingSequence>& all, size_t first, size_t count) {
	Batch b;
	std::vector<std::vector<int64_t>> ids;
	for (size_t i = first; i < first + count; ++i) {
		b.sequences.push_back(all[i]);
		ids.push_back(all[i].ids);
	}
	b.ids = nn::right_padded_ids(ids);
	b.valid = at::zeros(b.ids.sizes(), at::TensorOptions().dtype(at::kBool));
	for (size_t r = 0; r < ids.size(); ++r)
		b.valid[static_cast<int64_t>(r)].slice(0, 0, static_cast<int64_t>(ids[r].size())).fill_(true);
	return b;
}

uint64_t scored_tokens(const nn::TrainingSequence& s) {
	return s.ids.size() - s.loss_from;
}

// Tensors to write, by name, in the order they were first produced.
class Collected {
public:
	at::Tensor& at_name(const std::string& name, const std::function<at::Tensor()>& make) {
		auto it = index_.find(name);
		if (it != index_.end()) return tensors_[it->second].second;
		index_[name] = tensors_.size();
		tensors_.emplace_back(name, make());
		return tensors_.back().second;
	}
	std::vector<std::pair<std::string, at::Tensor>>& all() { return tensors_; }

private:
	std::map<std::string, size_t> index_;
	std::vector<std::pair<std::string, at::Tensor>> tensors_;
};

// The rows of x [B, L, n] at real tokens, as [tokens, n] in float32.
at::Tensor real_rows(const at::Tensor& x, const at::Tensor& valid) {
	const auto flat = x.detach().reshape({-1, x.size(-1)}).to(at::kFloat);
	return flat.index_select(0, valid.reshape({-1}).nonzero().squeeze(1));
}

// Gram matrices: one accumulator per distinct input tensor (q/k/v read the same x), shared by
// the names that read it.
class GramObserver {
public:
	explicit GramObserver(const at::Tensor* valid) : valid_(valid) {}
	void start_batch() { by_input_.clear(); }
	void operator()(const std::string& name, const at::Tensor& x, const at::Tensor&) {
		const void* key = x.unsafeGetTensorImpl();
		auto it = by_input_.find(key);
		if (it == by_input_.end()) {
			const auto rows = real_rows(x, *valid_);
			const auto gram = at::matmul(rows.t(), rows);
			auto acc = accumulator_of_.count(name) ? accumulator_of_[name] : new_accumulator(name, gram.size(0));
			acc->add_(gram);
			by_input_[key] = {x, acc}; // x held, so that no later input reuses its address this batch
			return;
		}
		if (!accumulator_of_.count(name)) {
			accumulator_of_[name] = it->second.second;
			order_.push_back(name);
		}
	}
	// name -> the mean over tokens, divided in place: names that share an input share the tensor.
	std::vector<std::pair<std::string, at::Tensor>> result(uint64_t tokens) {
		std::set<const void*> divided;
		std::vector<std::pair<std::string, at::Tensor>> out;
		for (const auto& name : order_) {
			auto& acc = *accumulator_of_.at(name);
			if (divided.insert(acc.data_ptr()).second) acc.div_(static_cast<double>(tokens));
			out.emplace_back(name, acc);
		}
		return out;
	}

private:
	std::shared_ptr<at::Tensor> new_accumulator(const std::string& name, int64_t n) {
		auto acc = std::make_shared<at::Tensor>(at::zeros({n, n}, at::TensorOptions().dtype(at::kFloat)));
		accumulator_of_[name] = acc;
		order_.push_back(name);
		return acc;
	}
	const at::Tensor* valid_;
	std::map<const void*, std::pair<at::Tensor, std::shared_ptr<at::Tensor>>> by_input_;
	std::map<std::string, std::shared_ptr<at::Tensor>> accumulator_of_;
	std::vector<std::string> order_;
};

std::string module_of(const std::string& weight_name) {
	const std::string suffix = ".weight";
	return weight_name.ends_with(suffix) ? weight_name.substr(0, weight_name.size() - suffix.size()) : weight_name;
}

void observe_activations(Collected& sums, const at::Tensor& valid, const std::string& name, const at::Tensor& x,
                         const at::Tensor& y) {
	const auto module = module_of(name);
	for (const auto& [label, value] : {std::pair{"input", &x}, std::pair{"output", &y}}) {
		const auto rows = real_rows(*value, valid).to(at::kDouble);
		const auto n = rows.size(1);
		auto zeros = [n] { return at::zeros({n}, at::TensorOptions().dtype(at::kDouble)); };
		sums.at_name(fmt::format("{}.{}_mean", module, label), zeros).add_(rows.sum(0));
		sums.at_name(fmt::format("{}.{}_sq_mean", module, label), zeros).add_(rows.pow(2).sum(0));
	}
}

// The gradient of the batch's summed negative log-likelihood of scored tokens (one backward pass).
void accumulate_gradient(nn::LlamaModel& model, const Batch& batch, std::vector<at::Tensor>& sums) {
	std::vector<at::Tensor> params;
	for (auto& [name, p] : model.parameters())
		params.push_back(p);
	const auto ll = nn::token_log_likelihoods(model.forward(batch.ids), batch.ids);
	auto scored = at::zeros(ll.sizes(), ll.options());
	for (size_t r = 0; r < batch.sequences.size(); ++r) {
		const auto& s = batch.sequences[r];
		scored[static_cast<int64_t>(r)]
		    .slice(0, static_cast<int64_t>(s.loss_from) - 1, static_cast<int64_t>(s.ids.size()) - 1)
		    .fill_(1);
	}
	const auto grads = torch::autograd::grad({-(ll * scored).sum()}, params);
	for (size_t i = 0; i < params.size(); ++i)
		sums[i].add_(grads[i].detach());
}

// Squared gradients of each scored token's log-likelihood, one backward pass per token.
void accumulate_fisher(nn::LlamaModel& model, const Batch& batch, std::vector<at::Tensor>& sums) {
	std::vector<at::Tensor> params;
	for (auto& [name, p] : model.parameters())
		params.push_back(p);
	const auto ll = nn::token_log_likelihoods(model.forward(batch.ids), batch.ids);
	std::vector<std::pair<int64_t, int64_t>> targets;
	for (size_t r = 0; r < batch.sequences.size(); ++r)
		for (size_t t = batch.sequences[r].loss_from; t < batch.sequences[r].ids.size(); ++t)
			targets.emplace_back(static_cast<int64_t>(r), static_cast<int64_t>(t) - 1);
	for (size_t k = 0; k < targets.size(); ++k) {
		const auto grads = torch::autograd::grad({ll[targets[k].first][targets[k].second]}, params, {},
		                                         /*retain_graph=*/k + 1 < targets.size());
		for (size_t i = 0; i < params.size(); ++i)
			sums[i].addcmul_(grads[i].detach(), grads[i].detach());
	}
}

void write_statistics(const fs::path& dir, std::vector<std::pair<std::string, at::Tensor>> tensors,
                      const SafetensorsMetadata& metadata) {
	std::vector<OutputTensorSpec> specs;
	for (auto& [name, t] : tensors) {
		t = t.detach().to(at::kFloat).contiguous();
		specs.push_back({name, DType::F32, std::vector<uint64_t>(t.sizes().begin(), t.sizes().end())});
	}
	SafetensorsWriter writer(dir, specs, UINT64_MAX, {}, metadata);
	for (size_t i = 0; i < tensors.size(); ++i)
		writer.write(i, {static_cast<const uint8_t*>(tensors[i].second.data_ptr()), tensors[i].second.nbytes()});
	writer.finish();
}

} // namespace

Kind parse_kind(std::string_view name) {
	if (name == "fisher") return Kind::Fisher;
	if (name == "gram") return Kind::Gram;
	if (name == "activations") return Kind::Activations;
	if (name == "gradient") return Kind::Gradient;
	throw Error(fmt::format("statistics kind {} is unknown (valid: fisher, gram, activations, gradient)",
	                        quote_for_message(std::string(name))));
}

std::string_view kind_name(Kind kind) {
	switch (kind) {
	case Kind::Fisher:
		return "fisher";
	case Kind::Gram:
		return "gram";
	case Kind::Activations:
		return "activations";
	case Kind::Gradient:
		return "gradient";
	}
	return "?";
}

std::string file_sha256(const fs::path& file) {
	std::ifstream in(file, std::ios::binary);
	if (!in) throw Error(fmt::format("{}: cannot read", show(file)));
	std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
	if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw Error("SHA-256 is not available");
	std::vector<char> buffer(1 << 20);
	while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0)
		EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(in.gcount()));
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int length = 0;
	EVP_DigestFinal_ex(ctx.get(), digest, &length);
	std::string hex;
	for (unsigned i = 0; i < length; ++i)
		hex += fmt::format("{:02x}", digest[i]);
	return hex;
}

StatsSummary compute_statistics(const StatsJob& job, const std::function<void(const StatsProgress&)>& on_progress) {
	if (job.batch_size <= 0) throw Error("--batch-size must be positive");
	OutputFolder out(job.out, job.force); // refused before any work when it exists
	if (job.threads > 0) at::set_num_threads(job.threads);
	auto model = nn::LlamaModel::load(job.model, at::kFloat);
	const auto& config = model.config();
	auto sequences =
	    nn::read_sequences(job.data, config.vocab_size, config.max_position_embeddings, job.model.string());

	StatsSummary summary;
	summary.data_sha256 = file_sha256(job.data);
	// Tokens counted as the kind counts them: scored tokens for fisher and gradient, input tokens
	// otherwise.
	const bool per_weight = job.kind == Kind::Fisher || job.kind == Kind::Gradient;
	auto count = [&](const nn::TrainingSequence& s) {
		return per_weight ? scored_tokens(s) : static_cast<uint64_t>(s.ids.size());
	};
	uint64_t total = 0;
	size_t used = 0;
	for (; used < sequences.size() && (job.max_tokens == 0 || total < job.max_tokens); ++used)
		total += count(sequences[used]);
	sequences.resize(used);
	if (total == 0) throw Error(fmt::format("{}: no token to take statistics on", show(job.data)));

	const auto start = std::chrono::steady_clock::now();
	at::Tensor valid;
	GramObserver gram(&valid);
	Collected sums;
	std::vector<at::Tensor> fisher; // fisher and gradient: one model-sized float32 buffer
	if (per_weight) {
		model.set_requires_grad(true);
		for (auto& [name, p] : model.parameters())
			fisher.push_back(at::zeros(p.sizes(), at::TensorOptions().dtype(at::kFloat)));
	} else if (job.kind == Kind::Gram) {
		model.set_linear_observer(
		    [&](const std::string& n, const at::Tensor& x, const at::Tensor& y) { gram(n, x, y); });
	} else {
		model.set_linear_observer([&](const std::string& n, const at::Tensor& x, const at::Tensor& y) {
			observe_activations(sums, valid, n, x, y);
		});
	}
	// One gradient per token: batches of one keep each backward pass as small as it can be.
	const size_t batch = job.kind == Kind::Fisher ? 1 : static_cast<size_t>(job.batch_size);
	for (size_t first = 0; first < sequences.size(); first += batch) {
		const auto b = make_batch(sequences, first, std::min(batch, sequences.size() - first));
		valid = b.valid;
		if (job.kind == Kind::Fisher) {
			accumulate_fisher(model, b, fisher);
		} else if (job.kind == Kind::Gradient) {
			accumulate_gradient(model, b, fisher);
		} else {
			const at::NoGradGuard no_grad;
			gram.start_batch();
			model.forward(b.ids);
		}
		for (const auto& s : b.sequences)
			summary.tokens += count(s);
		summary.sequences += b.sequences.size();
		if (on_progress)
			on_progress({summary.tokens, total,
			             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()});
	}

	// Means computed in place, and the model dropped first: the output is the largest buffer left.
	std::vector<std::pair<std::string, at::Tensor>> tensors;
	const double n = static_cast<double>(summary.tokens);
	if (per_weight) {
		size_t i = 0;
		for (auto& [name, p] : model.parameters())
			tensors.emplace_back(name, fisher[i++].div_(n));
		fisher.clear();
	} else if (job.kind == Kind::Gram) {
		tensors = gram.result(summary.tokens);
	} else {
		for (auto& [name, t] : sums.all())
			tensors.emplace_back(name, t.div_(n));
	}
	model = nn::LlamaModel();
	write_statistics(out.path(), std::move(tensors),
	                 {{"weld_stats", std::string(kind_name(job.kind))},
	                  {"data", job.data.filename().string()},
	                  {"data_sha256", summary.data_sha256},
	                  {"tokens", std::to_string(summary.tokens)},
	                  {"sequences", std::to_string(summary.sequences)},
	                  {"model", job.model.string()}});
	out.publish();
	return summary;
}

} // namespace weld::stats
