#include "analyze/analyze.h"

#include "exec/executor.h"
#include "io/model.h"
#include "io/output_folder.h"
#include "methods/method.h"
#include "plan/plan.h"
#include "plan/recipe.h"
#include "tensor/convert.h"
#include "util/error.h"
#include "util/memory_budget.h"
#include "util/progress.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace weld::analyze {
namespace {

// Runs fn(i) for i in [0, count) on `threads` threads, each item holding bytes_of(i) of the
// budget while it runs. The first exception stops the rest and is rethrown.
void for_each_under_budget(size_t count, unsigned threads, uint64_t budget_bytes,
                           const std::function<uint64_t(size_t)>& bytes_of, const std::function<void(size_t)>& fn) {
	MemoryBudget budget(budget_bytes);
	std::atomic<size_t> next{0};
	std::atomic<bool> failed{false};
	std::exception_ptr error;
	std::mutex error_mutex;
	auto work = [&] {
		for (size_t i = next++; i < count && !failed; i = next++) {
			const uint64_t bytes = bytes_of(i);
			budget.acquire(bytes);
			try {
				fn(i);
			} catch (...) {
				std::lock_guard lock(error_mutex);
				if (!error) error = std::current_exception();
				failed = true;
			}
			budget.release(bytes);
		}
	};
	std::vector<std::thread> pool;
	for (unsigned t = 1; t < std::min<size_t>(std::max(1u, threads), count); t++)
		pool.emplace_back(work);
	work();
	for (auto& thread : pool)
		thread.join();
	if (error) std::rethrow_exception(error);
}

// A tensor as float32; its pages are released once copied.
std::vector<float> read_tensor(const ModelFolder::Tensor& t, uint64_t count) {
	std::vector<float> values(count);
	convert_to_f32(t.info->dtype, t.file->data(*t.info).data(), values.data(), count);
	t.file->release(*t.info);
	return values;
}

// Each model's counterpart of every base tensor, checked: same shape, a numeric dtype.
std::vector<std::vector<const ModelFolder::Tensor*>>
match_tensors(const ModelFolder& base, const std::vector<std::unique_ptr<ModelFolder>>& models,
              const std::vector<std::string>& names) {
	std::vector<std::vector<const ModelFolder::Tensor*>> matched;
	for (const auto& t : base.tensors()) {
		const auto& name = t.info->name;
		if (!dtype_is_arithmetic(t.info->dtype))
			throw Error(fmt::format("{}: tensor '{}' has dtype {}, not a float type weld can analyze",
			                        base.dir().string(), name, dtype_safetensors_name(t.info->dtype)));
		std::vector<const ModelFolder::Tensor*> row;
		for (size_t i = 0; i < models.size(); i++) {
			const auto* m = models[i]->find(name);
			if (!m) throw Error(fmt::format("{}: no tensor '{}' (the base model has it)", names[i], name));
			if (m->info->shape != t.info->shape)
				throw Error(fmt::format("{}: tensor '{}' has shape [{}], the base model's is [{}]", names[i], name,
				                        fmt::join(m->info->shape, ", "), fmt::join(t.info->shape, ", ")));
			if (!dtype_is_arithmetic(m->info->dtype))
				throw Error(fmt::format("{}: tensor '{}' has dtype {}, not a float type weld can analyze", names[i],
				                        name, dtype_safetensors_name(m->info->dtype)));
			row.push_back(m);
		}
		matched.push_back(std::move(row));
	}
	return matched;
}

std::vector<TensorStats> analyze_family(const AnalyzeOptions& options) {
	const ModelFolder base(resolve_model_reference(options.base));
	std::vector<std::unique_ptr<ModelFolder>> models;
	for (const auto& m : options.models)
		models.push_back(std::make_unique<ModelFolder>(resolve_model_reference(m)));
	const auto matched = match_tensors(base, models, options.models);
	const auto& tensors = base.tensors();
	std::vector<TensorStats> stats(tensors.size());
	uint64_t total_bytes = 0;
	for (const auto& t : tensors)
		total_bytes += t.info->nbytes() * (models.size() + 1);
	Progress progress("analyze", tensors.size(), "tensors", total_bytes,
	                  options.progress ? Progress::Mode::Auto : Progress::Mode::Silent);
	// Per tensor: float32 copies of the base and each model, their task vectors, and as much
	// again for top-k masks and magnitudes.
	auto bytes_of = [&](size_t k) { return tensors[k].info->numel() * (3 * models.size() + 2) * sizeof(float); };
	try {
		for_each_under_budget(tensors.size(), options.threads, options.memory_budget, bytes_of, [&](size_t k) {
			const auto& t = tensors[k];
			const uint64_t n = t.info->numel();
			const auto base_values = read_tensor(t, n);
			std::vector<std::vector<float>> values;
			std::vector<std::span<const float>> spans;
			for (const auto* m : matched[k])
				values.push_back(read_tensor(*m, n));
			for (const auto& v : values)
				spans.emplace_back(v);
			stats[k] = analyze_tensor(t.info->name, t.info->shape, base_values, spans);
			progress.add(1, t.info->nbytes() * (models.size() + 1));
		});
	} catch (...) {
		progress.abandon();
		throw;
	}
	progress.finish();
	return stats;
}

void check_recipe_plan(const Plan& plan, const std::string& label) {
	const auto& info = plan.method->info();
	if (plan.base_model < 0)
		throw Error(fmt::format("{}: the recipe has no base_model; what a merge keeps is measured against it", label));
	if (info.learned || learns_from_data(info, plan.recipe))
		throw Error(fmt::format("{}: method '{}' learns from data; weld analyze --recipe takes methods that merge "
		                        "tensor by tensor",
		                        label, info.name));
	if (!info.statistics.empty())
		throw Error(fmt::format("{}: method '{}' needs {} statistics, which weld analyze --recipe does not read", label,
		                        info.name, info.statistics));
	for (const auto& job : plan.jobs)
		if (job.rows)
			throw Error(fmt::format("{}: tensor '{}': tokenizer settings are not supported by weld analyze --recipe",
			                        label, job.name));
}

// How much a model's task vector is scaled to see where the merge takes it from: a power-of-two
// step, large enough to move a float32 result. Down, not up: a weaker model never wins a sign
// election it lost, so an entry TIES overruled stays unchanged, while one it kept still moves.
constexpr float kProbeScale = 1.0f - 1.0f / 64;

std::vector<float> merge_sources(const Plan& plan, const TensorJob& job,
                                 const std::vector<std::vector<float>>& sources) {
	MergeInput input = job_input(plan, job);
	for (const auto& s : sources)
		input.sources.emplace_back(s);
	std::vector<float> merged(job.numel());
	plan.method->merge(input, merged);
	return merged;
}

// Merges one job as the executor would; then, per model, again with its task vector scaled by
// kProbeScale: the entries whose merged value moves are the ones the merge takes from that model
// (TIES' trimmed and sign-elected entries, DARE's undropped ones, every entry of a linear merge).
RecipeTensor measure_job(const Plan& plan, const TensorJob& job, const std::vector<int>& recipe_model_of) {
	const uint64_t n = job.numel();
	const size_t models = plan.models.size() - 1;
	RecipeTensor r{.name = job.name,
	               .place = place_of(job.name),
	               .elements = n,
	               .nonzero = std::vector<uint64_t>(models, 0),
	               .kept = std::vector<uint64_t>(models, 0),
	               .mass = std::vector<double>(models, 0),
	               .kept_mass = std::vector<double>(models, 0)};
	std::vector<std::vector<float>> sources;
	for (const auto& s : job.sources)
		sources.push_back(read_tensor(*s.tensor, n));
	const auto merged = merge_sources(plan, job, sources);
	const auto base = sources[static_cast<size_t>(job.base_index)];
	for (uint64_t j = 0; j < n; j++) {
		const float change = merged[j] - base[j];
		r.base_sq += static_cast<double>(base[j]) * base[j];
		r.merged_sq += static_cast<double>(change) * change;
		r.unchanged += change == 0;
	}
	for (size_t s = 0; s < job.sources.size(); s++) {
		const int m = recipe_model_of[job.sources[s].model];
		if (static_cast<int>(s) == job.base_index || m < 0) continue;
		const std::vector<float> original = sources[s];
		for (uint64_t j = 0; j < n; j++)
			sources[s][j] = base[j] + (original[j] - base[j]) * kProbeScale;
		const auto probed = merge_sources(plan, job, sources);
		sources[s] = original;
		for (uint64_t j = 0; j < n; j++) {
			const float tau = original[j] - base[j];
			if (tau == 0) continue;
			const double a = std::abs(static_cast<double>(tau));
			r.nonzero[m]++;
			r.mass[m] += a;
			if (probed[j] != merged[j]) {
				r.kept[m]++;
				r.kept_mass[m] += a;
			}
		}
	}
	return r;
}

RecipeAnalysis analyze_recipe(const AnalyzeOptions& options) {
	const auto label = options.recipe.string();
	const Plan plan = build_plan(parse_recipe(read_text_file(options.recipe), label), 0);
	check_recipe_plan(plan, label);
	RecipeAnalysis out{.path = options.recipe, .method = plan.method->info().name, .models = {}, .tensors = {}};
	std::vector<int> recipe_model_of(plan.models.size(), -1); // plan model -> index among non-base models
	for (size_t m = 0; m < plan.models.size(); m++)
		if (static_cast<int>(m) != plan.base_model) {
			recipe_model_of[m] = static_cast<int>(out.models.size());
			out.models.push_back(plan.models[m].reference);
		}
	std::vector<size_t> jobs; // those with a base among their sources and a computation to run
	for (size_t k = 0; k < plan.jobs.size(); k++)
		if (plan.jobs[k].base_index >= 0 && !plan.jobs[k].is_plain_copy(*plan.method)) jobs.push_back(k);
	out.tensors.resize(jobs.size());
	Progress progress("analyze --recipe", jobs.size(), "tensors", 0,
	                  options.progress ? Progress::Mode::Auto : Progress::Mode::Silent);
	try {
		for_each_under_budget(
		    jobs.size(), options.threads, options.memory_budget,
		    [&](size_t k) {
			    return job_working_bytes(plan.jobs[jobs[k]]) + 3 * plan.jobs[jobs[k]].numel() * sizeof(float);
		    },
		    [&](size_t k) {
			    out.tensors[k] = measure_job(plan, plan.jobs[jobs[k]], recipe_model_of);
			    progress.add(1);
		    });
	} catch (...) {
		progress.abandon();
		throw;
	}
	progress.finish();
	return out;
}

} // namespace

void RecipeTensor::add(const RecipeTensor& o) {
	elements += o.elements;
	base_sq += o.base_sq;
	merged_sq += o.merged_sq;
	unchanged += o.unchanged;
	nonzero.resize(std::max(nonzero.size(), o.nonzero.size()), 0);
	kept.resize(nonzero.size(), 0);
	mass.resize(nonzero.size(), 0);
	kept_mass.resize(nonzero.size(), 0);
	for (size_t i = 0; i < o.nonzero.size(); i++) {
		nonzero[i] += o.nonzero[i];
		kept[i] += o.kept[i];
		mass[i] += o.mass[i];
		kept_mass[i] += o.kept_mass[i];
	}
}

double RecipeTensor::kept_fraction(size_t i) const {
	return nonzero[i] ? static_cast<double>(kept[i]) / static_cast<double>(nonzero[i]) : 0;
}

double RecipeTensor::kept_mass_fraction(size_t i) const {
	return mass[i] > 0 ? kept_mass[i] / mass[i] : 0;
}

Analysis analyze_models(const AnalyzeOptions& options) {
	Analysis a{.base = options.base, .models = options.models, .tensors = {}, .recipe = {}};
	if (options.models.empty()) throw Error("weld analyze: give at least one fine-tuned model beside the base");
	a.tensors = analyze_family(options);
	if (!options.recipe.empty()) a.recipe = analyze_recipe(options);
	return a;
}

} // namespace weld::analyze
