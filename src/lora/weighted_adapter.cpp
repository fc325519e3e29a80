#include "lora/weighted_adapter.h"

#include "io/output_folder.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <functional>
#include <map>
#include <set>
#include <thread>

namespace weld::lora {
namespace {

void check_combinable(const PeftAdapter& adapter) {
	if (!adapter.saved.empty() || !adapter.config.modules_to_save.empty())
		throw Error(fmt::format("adapter {}: modules_to_save cannot be combined (PEFT's add_weighted_adapter "
		                        "merges only LoRA factors); save the adapter without them",
		                        adapter.dir.string()));
	for (const auto& module : adapter.modules)
		if (!module.bias.empty())
			throw Error(fmt::format("adapter {}: module '{}' has a lora_B bias, which add_weighted_adapter cannot "
			                        "combine",
			                        adapter.dir.string(), module.name));
}

// The new adapter's target_modules: the union of lists, or the regexes joined as PEFT joins them.
void set_target_modules(PeftAdapterConfig& config, const std::vector<PeftAdapter>& adapters) {
	const bool regex = adapters.front().config.target_modules_regex.has_value();
	for (const auto& adapter : adapters)
		if (adapter.config.target_modules_regex.has_value() != regex)
			throw Error(fmt::format("adapters {} and {}: target_modules is a list in one and a regex in the other; "
			                        "PEFT cannot combine them",
			                        adapters.front().dir.string(), adapter.dir.string()));
	if (regex) {
		std::string joined;
		for (const auto& adapter : adapters)
			joined += (joined.empty() ? "(" : "|(") + *adapter.config.target_modules_regex + ")";
		config.target_modules_regex = joined;
		return;
	}
	std::set<std::string> names;
	for (const auto& adapter : adapters)
		names.insert(adapter.config.target_modules.begin(), adapter.config.target_modules.end());
	config.target_modules.assign(names.begin(), names.end());
}

// An adapter's largest rank (PEFT sizes the new adapter from r and rank_pattern alike).
size_t largest_rank(const PeftAdapter& adapter) {
	size_t rank = static_cast<size_t>(adapter.config.r);
	for (const auto& [key, r] : adapter.config.rank_pattern)
		rank = std::max(rank, static_cast<size_t>(r));
	return rank;
}

// Every adapter's module `name` updates a weight of one shape.
void check_shapes(const std::vector<PeftAdapter>& adapters, const std::string& name,
                  const std::vector<size_t>& present) {
	const LoraModule& like = *adapters[present.front()].find(name);
	for (size_t i : present) {
		const LoraModule& m = *adapters[i].find(name);
		if (m.embedding != like.embedding || m.in_features != like.in_features || m.out_features != like.out_features)
			throw Error(fmt::format("module '{}': adapter {} updates a [{}, {}] {} but adapter {} a [{}, {}] {}; "
			                        "adapters of different base models cannot be combined",
			                        name, adapters[present.front()].dir.string(), like.out_features, like.in_features,
			                        like.embedding ? "embedding" : "weight", adapters[i].dir.string(), m.out_features,
			                        m.in_features, m.embedding ? "embedding" : "weight"));
	}
}

// Runs fn(0..count-1) on `threads` threads. Each index writes only its own result, so the output
// does not depend on the thread count; of several failures the lowest index's is rethrown.
void for_each_index(size_t count, unsigned threads, const std::function<void(size_t)>& fn) {
	std::vector<std::exception_ptr> errors(count);
	std::atomic<size_t> next{0};
	const auto work = [&] {
		for (size_t j; (j = next++) < count;)
			try {
				fn(j);
			} catch (...) {
				errors[j] = std::current_exception();
			}
	};
	std::vector<std::thread> pool;
	for (unsigned t = 1; t < std::min<size_t>(std::max(threads, 1u), count); ++t)
		pool.emplace_back(work);
	work();
	for (auto& thread : pool)
		thread.join();
	for (const auto& error : errors)
		if (error) std::rethrow_exception(error);
}

} // namespace

ModulesByName modules_by_name(const std::vector<PeftAdapter>& adapters) {
	ModulesByName out;
	for (size_t i = 0; i < adapters.size(); ++i)
		for (const auto& module : adapters[i].modules) {
			auto& list = out.holders[module.name];
			if (list.empty()) out.names.push_back(module.name);
			list.push_back(i);
		}
	return out;
}

LoraFactors factors_of(const LoraModule& module) {
	LoraFactors f{linalg::MatrixF(module.rank, module.in_features), linalg::MatrixF(module.out_features, module.rank),
	              module.scaling};
	f.a.data = module.a;
	f.b.data = module.b;
	return f;
}

LoraModule module_of(const LoraFactors& factors, const LoraModule& like) {
	LoraModule m;
	m.name = like.name;
	m.embedding = like.embedding;
	m.rank = factors.a.rows;
	m.in_features = factors.a.cols;
	m.out_features = factors.b.rows;
	m.a = factors.a.data;
	m.b = factors.b.data;
	m.scaling = factors.scaling;
	return m;
}

CombinedAdapter combine_adapters(const std::vector<PeftAdapter>& adapters, CombineOptions options, unsigned threads) {
	if (adapters.empty()) throw Error("no adapters to combine");
	for (const auto& adapter : adapters)
		check_combinable(adapter);
	check_options(options, adapters.size());
	if (adapters.size() == 1) options.type = CombinationType::Linear; // as PEFT does
	std::vector<size_t> ranks;
	for (const auto& adapter : adapters)
		ranks.push_back(largest_rank(adapter));
	const size_t rank = combined_rank(options, ranks);

	CombinedAdapter out;
	out.config = adapters.front().config;
	out.config.r = static_cast<int64_t>(rank);
	out.config.lora_alpha = static_cast<double>(rank);
	out.config.use_rslora = false;
	out.config.rank_pattern.clear();
	out.config.alpha_pattern.clear();
	set_target_modules(out.config, adapters);

	auto [names, holders] = modules_by_name(adapters);
	for (const auto& name : names)
		check_shapes(adapters, name, holders[name]);
	out.modules.resize(names.size());
	for_each_index(names.size(), threads, [&](size_t j) {
		const auto& present = holders.find(names[j])->second;
		std::vector<LoraFactors> factors;
		for (size_t i : present)
			factors.push_back(factors_of(*adapters[i].find(names[j])));
		std::vector<const LoraFactors*> pointers;
		for (const auto& f : factors)
			pointers.push_back(&f);
		out.modules[j] = module_of(combine_module(options, names[j], pointers, present, rank),
		                           *adapters[present.front()].find(names[j]));
	});
	return out;
}

CombinedAdapter average_adapters(const std::vector<PeftAdapter>& adapters, const std::vector<double>& weights,
                                 std::optional<size_t> svd_rank, std::optional<double> svd_clamp, unsigned threads) {
	CombineOptions options;
	options.type = CombinationType::Cat;
	options.weights = weights;
	options.svd_rank = svd_rank;
	options.svd_clamp = svd_clamp;
	CombinedAdapter out = combine_adapters(adapters, options, threads);
	if (!svd_rank) return out;
	for_each_index(out.modules.size(), threads, [&](size_t j) {
		auto& module = out.modules[j];
		module = module_of(refactorize(factors_of(module), *svd_rank, svd_clamp), module);
	});
	out.config.r = static_cast<int64_t>(*svd_rank);
	out.config.lora_alpha = static_cast<double>(*svd_rank);
	return out;
}

void write_combined_adapter(const CombinedAdapter& adapter, const std::filesystem::path& out, bool force) {
	write_folder_atomically(out, force, [&](const std::filesystem::path& dir) {
		write_peft_adapter(dir, adapter.config, adapter.modules, DType::F32);
	});
}

} // namespace weld::lora
