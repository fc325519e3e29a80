#include "lora/extract.h"

#include "io/model.h"
#include "io/output_folder.h"
#include "io/peft.h"
#include "tensor/convert.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

namespace weld {
namespace fs = std::filesystem;

ExtractedFactors decompose_task_vector(const linalg::MatrixF& delta, int64_t max_rank, double sv_epsilon,
                                       bool distribute_scale, LoraSvd svd, uint64_t key) {
	const size_t smaller = std::min(delta.rows, delta.cols);
	size_t rank = std::min(static_cast<size_t>(std::max<int64_t>(max_rank, 0)), smaller);
	const size_t oversample = randomized_svd_oversample(rank);
	const bool randomized = svd == LoraSvd::Randomized || (svd == LoraSvd::Auto && smaller >= kRandomizedSvdMinSide &&
	                                                       rank + oversample <= smaller / 4);
	const auto s = randomized ? linalg::randomized_svd(delta, rank, key, oversample, kRandomizedSvdPowerIterations)
	                          : linalg::svd(delta);
	if (sv_epsilon > 0)
		rank = std::min(
		    rank, static_cast<size_t>(std::count_if(s.S.begin(), s.S.end(), [&](float v) { return v > sv_epsilon; })));
	ExtractedFactors f;
	f.rank = rank;
	f.randomized = randomized;
	f.a.resize(rank * delta.cols);
	f.b.resize(delta.rows * rank);
	for (size_t k = 0; k < rank; k++) {
		const float sigma = s.S[k];
		const float scale_a = distribute_scale ? std::sqrt(sigma) : sigma;
		const float scale_b = distribute_scale ? std::sqrt(sigma) : 1.0f;
		for (size_t j = 0; j < delta.cols; j++)
			f.a[k * delta.cols + j] = scale_a * s.Vt(k, j);
		for (size_t i = 0; i < delta.rows; i++)
			f.b[i * rank + k] = s.U(i, k) * scale_b;
		f.singular_values.push_back(sigma);
	}
	return f;
}

namespace {

// The names transformers gives nn.Embedding modules, and the output embedding (lm_head), which
// mergekit treats as one: without embed_lora both are saved whole.
bool is_embedding(std::string_view last) {
	static constexpr std::string_view kNames[] = {"embed_tokens",
	                                              "embed_in",
	                                              "wte",
	                                              "wpe",
	                                              "word_embeddings",
	                                              "position_embeddings",
	                                              "token_type_embeddings",
	                                              "tok_embeddings",
	                                              "embed_positions"};
	return std::find(std::begin(kNames), std::end(kNames), last) != std::end(kNames);
}
bool is_output_embedding(std::string_view last) {
	return last == "lm_head" || last == "embed_out";
}

std::string last_part(const std::string& module) {
	const auto dot = module.rfind('.');
	return dot == std::string::npos ? module : module.substr(dot + 1);
}

uint64_t name_key(std::string_view name) { // FNV-1a: the same on every platform
	uint64_t h = 1469598103934665603ull;
	for (unsigned char c : name)
		h = (h ^ c) * 1099511628211ull;
	return h;
}

std::vector<std::regex> compile_all(const std::vector<std::string>& patterns, const char* option) {
	std::vector<std::regex> out;
	for (const auto& p : patterns) {
		try {
			out.emplace_back(p, std::regex::ECMAScript);
		} catch (const std::regex_error& e) {
			throw Error(fmt::format("{}: '{}' is not a valid regular expression: {}", option, p, e.what()));
		}
	}
	return out;
}

bool search_any(const std::vector<std::regex>& patterns, const std::string& name) {
	return std::any_of(patterns.begin(), patterns.end(), [&](const auto& r) { return std::regex_search(name, r); });
}

std::vector<float> to_f32(const ModelFolder::Tensor& t) {
	std::vector<float> values(t.info->numel());
	convert_to_f32(t.info->dtype, t.file->data(*t.info).data(), values.data(), values.size());
	return values;
}

struct ModuleJob {
	std::string name;
	const ModelFolder::Tensor* weight = nullptr; // the fine-tune's
	const ModelFolder::Tensor* bias = nullptr;
	bool transpose = false; // embeddings: lora_embedding_A/B of Δᵀ
};

class Extraction {
public:
	Extraction(const ExtractLoraOptions& options, const ModelFolder& base, const ModelFolder& finetune)
	    : options_(options), base_(base), finetune_(finetune), modules_to_save_(options.modules_to_save),
	      include_(compile_all(options.include_regexes, "--include-regex")),
	      exclude_(compile_all(options.exclude_regexes, "--exclude-regex")) {}

	void plan(ExtractLoraSummary& summary);
	std::vector<LoraModule> decompose(ExtractLoraSummary& summary) const;
	const std::vector<std::string>& modules_to_save() const { return modules_to_save_; }
	const std::vector<const ModelFolder::Tensor*>& saved() const { return saved_; }

private:
	const ModelFolder::Tensor* base_tensor(const ModelFolder::Tensor& t) const;
	LoraModule decompose_one(const ModuleJob& job, bool* randomized) const;
	void save(const std::string& module);
	void keep_whole(const std::string& key, const std::string& why, ExtractLoraSummary& summary);

	const ExtractLoraOptions& options_;
	const ModelFolder& base_;
	const ModelFolder& finetune_;
	std::vector<std::string> modules_to_save_;
	std::vector<std::regex> include_, exclude_;
	std::vector<ModuleJob> jobs_;
	std::vector<const ModelFolder::Tensor*> saved_;
};

void Extraction::keep_whole(const std::string& key, const std::string& why, ExtractLoraSummary& summary) {
	if (std::find(modules_to_save_.begin(), modules_to_save_.end(), key) != modules_to_save_.end()) return;
	modules_to_save_.push_back(key);
	summary.warnings.push_back(fmt::format("{}: {}; saving it whole (modules_to_save)", key, why));
}

void Extraction::save(const std::string& module) {
	for (const char* suffix : {".weight", ".bias"})
		if (const auto* t = finetune_.find(module + suffix)) saved_.push_back(t);
}

// mergekit's plan_extraction, module by module in the fine-tune's order.
void Extraction::plan(ExtractLoraSummary& summary) {
	bool embed_lora = options_.embed_lora;
	for (const auto& t : finetune_.tensors()) {
		const auto last = last_part(t.info->name.substr(0, t.info->name.rfind('.')));
		const auto* b = base_.find(t.info->name);
		if (embed_lora && is_embedding(last) && std::string_view(t.info->name).ends_with(".weight") && b &&
		    b->info->shape != t.info->shape) {
			summary.warnings.push_back(fmt::format("vocabulary size mismatch: {} is {} in the fine-tune, {} in the "
			                                       "base; embeddings are saved whole (no --embed-lora)",
			                                       t.info->name, fmt::join(t.info->shape, "x"),
			                                       fmt::join(b->info->shape, "x")));
			embed_lora = false;
		}
	}
	for (const auto& t : finetune_.tensors()) {
		const std::string& tensor = t.info->name;
		if (!std::string_view(tensor).ends_with(".weight")) continue;
		const std::string module = tensor.substr(0, tensor.size() - 7);
		const std::string key = last_part(module);
		if (!embed_lora && (is_embedding(key) || is_output_embedding(key)) && !search_any(exclude_, module))
			keep_whole(key, "an embedding (use --embed-lora to decompose it)", summary);
		const bool listed = std::find_if(modules_to_save_.begin(), modules_to_save_.end(), [&](const auto& m) {
			                    return m == module || m == key;
		                    }) != modules_to_save_.end();
		if (listed) {
			save(module);
			continue;
		}
		if (!options_.include_regexes.empty() && !search_any(include_, module)) continue;
		if (search_any(exclude_, module)) continue;
		if (t.info->shape.size() == 2 && dtype_is_arithmetic(t.info->dtype)) {
			jobs_.push_back({module, &t, finetune_.find(module + ".bias"), is_embedding(key)});
			continue;
		}
		if (options_.skip_undecomposable) {
			summary.warnings.push_back(fmt::format("{}: not a matrix; skipped", key));
			continue;
		}
		keep_whole(key, "not a matrix", summary);
		save(module);
	}
}

const ModelFolder::Tensor* Extraction::base_tensor(const ModelFolder::Tensor& t) const {
	const auto* b = base_.find(t.info->name);
	if (!b)
		throw Error(fmt::format("tensor '{}' of the fine-tune '{}' is not in the base model '{}'", t.info->name,
		                        options_.finetune, options_.base));
	if (b->info->shape != t.info->shape || !dtype_is_arithmetic(b->info->dtype))
		throw Error(fmt::format("tensor '{}': the fine-tune's is {} [{}], the base model's {} [{}]", t.info->name,
		                        dtype_safetensors_name(t.info->dtype), fmt::join(t.info->shape, ", "),
		                        dtype_safetensors_name(b->info->dtype), fmt::join(b->info->shape, ", ")));
	return b;
}

LoraModule Extraction::decompose_one(const ModuleJob& job, bool* randomized) const {
	const auto& shape = job.weight->info->shape;
	auto values = to_f32(*job.weight);
	const auto base = to_f32(*base_tensor(*job.weight));
	for (size_t j = 0; j < values.size(); j++)
		values[j] -= base[j];
	job.weight->file->release(*job.weight->info);
	// Δ is [rows, cols]; an embedding's update is decomposed as Δᵀ, [width, vocabulary].
	linalg::MatrixF delta(job.transpose ? shape[1] : shape[0], job.transpose ? shape[0] : shape[1]);
	for (size_t i = 0; i < shape[0]; i++)
		for (size_t j = 0; j < shape[1]; j++)
			(job.transpose ? delta(j, i) : delta(i, j)) = values[i * shape[1] + j];
	auto f = decompose_task_vector(delta, options_.max_rank, options_.sv_epsilon, options_.distribute_scale,
	                               options_.svd, name_key(job.name));
	*randomized = f.randomized;
	LoraModule m;
	m.name = job.name;
	m.embedding = job.transpose;
	m.rank = f.rank;
	m.in_features = delta.cols;
	m.out_features = delta.rows;
	m.a = std::move(f.a);
	m.b = std::move(f.b);
	if (job.bias) {
		m.bias = to_f32(*job.bias);
		const auto b = to_f32(*base_tensor(*job.bias));
		for (size_t j = 0; j < m.bias.size(); j++)
			m.bias[j] -= b[j];
	}
	return m;
}

std::vector<LoraModule> Extraction::decompose(ExtractLoraSummary& summary) const {
	for (const auto& job : jobs_) // shapes first: a bad pair fails before any SVD runs
		base_tensor(*job.weight);
	std::vector<LoraModule> modules(jobs_.size());
	std::vector<char> randomized(jobs_.size(), 0);
	std::atomic<size_t> next{0};
	std::exception_ptr error;
	std::mutex error_mutex;
	auto work = [&] {
		for (size_t i = next++; i < jobs_.size(); i = next++) {
			try {
				bool r = false;
				modules[i] = decompose_one(jobs_[i], &r);
				randomized[i] = r;
			} catch (...) {
				std::lock_guard lock(error_mutex);
				if (!error) error = std::current_exception();
				next = jobs_.size();
			}
		}
	};
	std::vector<std::thread> pool;
	for (unsigned t = 1; t < std::max(1u, options_.threads); t++)
		pool.emplace_back(work);
	work();
	for (auto& thread : pool)
		thread.join();
	if (error) std::rethrow_exception(error);

	std::vector<LoraModule> kept;
	for (size_t i = 0; i < modules.size(); i++) {
		if (modules[i].rank == 0) { // PEFT refuses r = 0; the module is unchanged at this epsilon
			summary.warnings.push_back(
			    fmt::format("{}: no singular value above --sv-epsilon; left out of the adapter", modules[i].name));
			continue;
		}
		summary.randomized += randomized[i];
		kept.push_back(std::move(modules[i]));
	}
	return kept;
}

// mergekit's make_config_dict: r and lora_alpha are the largest rank, and rank_pattern and
// alpha_pattern give every other module its own rank as both, so that every scaling is 1.
PeftAdapterConfig adapter_config(const ExtractLoraOptions& options, const std::vector<LoraModule>& modules,
                                 const std::vector<std::string>& modules_to_save) {
	PeftAdapterConfig config;
	uint64_t max_rank = 0;
	std::set<std::string> targets;
	for (const auto& m : modules) {
		max_rank = std::max(max_rank, m.rank);
		targets.insert(last_part(m.name));
	}
	config.r = static_cast<int64_t>(std::max<uint64_t>(max_rank, 1));
	config.lora_alpha = static_cast<double>(config.r);
	config.target_modules.assign(targets.begin(), targets.end());
	for (const auto& m : modules)
		if (static_cast<int64_t>(m.rank) != config.r) {
			config.rank_pattern.emplace_back(m.name, static_cast<int64_t>(m.rank));
			config.alpha_pattern.emplace_back(m.name, static_cast<double>(m.rank));
		}
	config.modules_to_save = modules_to_save;
	config.base_model_name_or_path = options.base;
	config.task_type = "CAUSAL_LM";
	// mergekit's key order, and the keys it writes beyond the ones weld reads.
	config.raw = {{"base_model_name_or_path", nullptr},
	              {"peft_type", "LORA"},
	              {"use_rslora", false},
	              {"target_modules", nullptr},
	              {"modules_to_save", nlohmann::ordered_json::array()},
	              {"task_type", nullptr},
	              {"r", 0},
	              {"lora_alpha", 0},
	              {"rank_pattern", nullptr},
	              {"alpha_pattern", nullptr},
	              {"lora_dropout", 0.0},
	              {"fan_in_fan_out", false},
	              {"inference_mode", true}};
	return config;
}

std::string model_card(const ExtractLoraOptions& options, const ExtractLoraSummary& summary) {
	return fmt::format(
	    "---\nbase_model: {}\nlibrary_name: peft\ntags:\n- weld\n- lora\n---\n# LoRA extracted by weld\n\n"
	    "A rank-{} LoRA adapter approximating the difference between `{}` and its base `{}`, "
	    "extracted by truncated SVD ({} modules decomposed, {} tensors saved whole).\n\n"
	    "```sh\n{}\n```\n",
	    options.base, summary.rank, options.finetune, options.base, summary.decomposed, summary.saved,
	    options.invocation);
}

} // namespace

ExtractLoraSummary extract_lora(const ExtractLoraOptions& options) {
	if (options.max_rank < 1) throw Error(fmt::format("--max-rank must be at least 1, got {}", options.max_rank));
	if (!(options.sv_epsilon >= 0) || !std::isfinite(options.sv_epsilon))
		throw Error(fmt::format("--sv-epsilon must be a number >= 0, got {}", options.sv_epsilon));
	const ModelFolder base(resolve_model_reference(options.base));
	const ModelFolder finetune(resolve_model_reference(options.finetune));
	ExtractLoraSummary summary;
	Extraction extraction(options, base, finetune);
	extraction.plan(summary);
	const auto modules = extraction.decompose(summary);
	if (modules.empty() && extraction.saved().empty())
		throw Error(fmt::format("extract-lora: no module of '{}' to decompose or save (check --include-regex and "
		                        "--exclude-regex)",
		                        options.finetune));
	const auto config = adapter_config(options, modules, extraction.modules_to_save());
	summary.decomposed = modules.size();
	summary.saved = extraction.saved().size();
	summary.rank = config.r;
	// The factors in the fine-tune's dtype (that of its first decomposed weight), as mergekit.
	DType dtype = DType::F32;
	for (const auto& t : finetune.tensors())
		if (!modules.empty() && t.info->name == modules[0].name + ".weight") dtype = t.info->dtype;
	std::vector<PeftTensorBytes> saved;
	for (const auto* t : extraction.saved())
		saved.push_back({t->info->name, t->info->dtype, t->info->shape, t->file->data(*t->info)});
	write_folder_atomically(options.out, options.force, [&](const fs::path& dir) {
		write_peft_adapter(dir, config, modules, dtype, saved);
		write_text_file(dir / "README.md", model_card(options, summary));
	});
	return summary;
}

} // namespace weld
