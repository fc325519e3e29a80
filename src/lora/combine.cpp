#include "lora/combine.h"

#include "tensor/kernels.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <utility>

namespace weld::lora {
namespace {

constexpr std::array<std::pair<std::string_view, CombinationType>, 11> kTypeNames{{
    {"svd", CombinationType::Svd},
    {"linear", CombinationType::Linear},
    {"cat", CombinationType::Cat},
    {"ties", CombinationType::Ties},
    {"ties_svd", CombinationType::TiesSvd},
    {"dare_linear", CombinationType::DareLinear},
    {"dare_ties", CombinationType::DareTies},
    {"dare_linear_svd", CombinationType::DareLinearSvd},
    {"dare_ties_svd", CombinationType::DareTiesSvd},
    {"magnitude_prune", CombinationType::MagnitudePrune},
    {"magnitude_prune_svd", CombinationType::MagnitudePruneSvd},
}};

// merge_utils.py's two steps: which entries each task tensor keeps, and how they are summed.
enum class Prune { None, Magnitude, Random };
enum class Sum { Weighted, Disjoint };

struct MergeRule {
	Prune prune = Prune::None;
	Sum sum = Sum::Weighted;
};

MergeRule merge_rule(CombinationType type) {
	switch (type) {
	case CombinationType::Svd:
	case CombinationType::Linear:
	case CombinationType::Cat:
		return {Prune::None, Sum::Weighted};
	case CombinationType::Ties:
	case CombinationType::TiesSvd:
		return {Prune::Magnitude, Sum::Disjoint};
	case CombinationType::DareLinear:
	case CombinationType::DareLinearSvd:
		return {Prune::Random, Sum::Weighted};
	case CombinationType::DareTies:
	case CombinationType::DareTiesSvd:
		return {Prune::Random, Sum::Disjoint};
	case CombinationType::MagnitudePrune:
	case CombinationType::MagnitudePruneSvd:
		return {Prune::Magnitude, Sum::Weighted};
	}
	return {};
}

// Keeps the int(density · n) entries of largest magnitude (PEFT's magnitude_based_pruning; among
// equal magnitudes the lower index, where torch.topk leaves the order unspecified).
void keep_largest(std::vector<double>& values, double density) {
	const size_t keep = static_cast<size_t>(density * static_cast<double>(values.size()));
	if (keep >= values.size()) return;
	std::vector<size_t> order(values.size());
	std::iota(order.begin(), order.end(), size_t{0});
	auto larger = [&](size_t x, size_t y) {
		const double ax = std::abs(values[x]), ay = std::abs(values[y]);
		return ax != ay ? ax > ay : x < y;
	};
	std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(), larger);
	for (size_t i = keep; i < order.size(); ++i)
		values[order[i]] = 0;
}

// DARE: keeps each entry with probability `density` and rescales the kept ones by 1 / density.
void drop_randomly(std::vector<double>& values, double density, uint64_t stream_key) {
	for (size_t j = 0; j < values.size(); ++j)
		values[j] = random_uniform(stream_key, j) < density ? values[j] / density : 0.0;
}

double sign_of(double x) {
	return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0);
}

// PEFT's disjoint merge: the sign elected from the pruned, unweighted tensors (sum of values for
// `total`, of signs for `frequency`; ties go to +), then the mean of the weighted entries that
// carry it (entries that are 0 never count).
std::vector<double> disjoint_sum(const std::vector<std::vector<double>>& tasks, const std::vector<double>& weights,
                                 MajoritySign method) {
	std::vector<double> out(tasks.front().size(), 0.0);
	for (size_t j = 0; j < out.size(); ++j) {
		double election = 0;
		for (const auto& task : tasks)
			election += method == MajoritySign::Total ? task[j] : sign_of(task[j]);
		const double majority = election >= 0 ? 1.0 : -1.0;
		double sum = 0, count = 0;
		for (size_t i = 0; i < tasks.size(); ++i)
			if (sign_of(tasks[i][j]) == majority) {
				sum += weights[i] * tasks[i][j];
				count += 1;
			}
		out[j] = sum / std::max(count, 1.0);
	}
	return out;
}

// merge_utils.py's task_arithmetic / ties / dare_linear / dare_ties / magnitude_prune on flat
// tensors of equal size; `stream_name` and `adapter_index` key DARE's masks.
std::vector<double> merge_tensors(const CombineOptions& options, std::vector<std::vector<double>> tasks,
                                  const std::vector<double>& weights, const std::string& stream_name,
                                  const std::vector<size_t>& adapter_index) {
	const MergeRule rule = merge_rule(options.type);
	// PEFT prunes only below density 1.
	if (rule.prune != Prune::None && *options.density < 1)
		for (size_t i = 0; i < tasks.size(); ++i) {
			if (rule.prune == Prune::Magnitude)
				keep_largest(tasks[i], *options.density);
			else
				drop_randomly(tasks[i], *options.density,
				              random_stream_key(options.seed, stream_name, adapter_index[i]));
		}
	if (rule.sum == Sum::Disjoint) return disjoint_sum(tasks, weights, options.majority_sign);
	std::vector<double> out(tasks.front().size(), 0.0);
	for (size_t i = 0; i < tasks.size(); ++i)
		for (size_t j = 0; j < out.size(); ++j)
			out[j] += weights[i] * tasks[i][j];
	return out;
}

std::vector<double> as_double(const linalg::MatrixF& m) {
	return {m.data.begin(), m.data.end()};
}

linalg::MatrixF as_float_matrix(size_t rows, size_t cols, const std::vector<double>& values) {
	linalg::MatrixF m(rows, cols);
	std::transform(values.begin(), values.end(), m.data.begin(), [](double v) { return static_cast<float>(v); });
	return m;
}

// The linear family: A and B merged separately, the sign of w·s on A only.
LoraFactors combine_factors(const CombineOptions& options, const std::string& module_name,
                            const std::vector<const LoraFactors*>& modules, const std::vector<size_t>& adapter_index) {
	std::vector<double> weights_a, weights_b;
	std::vector<std::vector<double>> tasks_a, tasks_b;
	for (size_t i = 0; i < modules.size(); ++i) {
		const double scaled = options.weights[adapter_index[i]] * modules[i]->scaling;
		const double root = std::sqrt(std::abs(scaled));
		weights_a.push_back(scaled >= 0 ? root : -root);
		weights_b.push_back(root);
		tasks_a.push_back(as_double(modules[i]->a));
		tasks_b.push_back(as_double(modules[i]->b));
	}
	const auto& first = *modules.front();
	LoraFactors out;
	out.a =
	    as_float_matrix(first.a.rows, first.a.cols,
	                    merge_tensors(options, std::move(tasks_a), weights_a, module_name + ".lora_A", adapter_index));
	out.b =
	    as_float_matrix(first.b.rows, first.b.cols,
	                    merge_tensors(options, std::move(tasks_b), weights_b, module_name + ".lora_B", adapter_index));
	return out;
}

// cat: the adapters' factors side by side, w·s folded into A; zero rank rows fill up to `rank`.
LoraFactors concatenate(const CombineOptions& options, const std::vector<const LoraFactors*>& modules,
                        const std::vector<size_t>& adapter_index, size_t rank) {
	const size_t in = modules.front()->a.cols, out_dim = modules.front()->b.rows;
	LoraFactors out{linalg::MatrixF(rank, in), linalg::MatrixF(out_dim, rank), 1.0};
	size_t offset = 0;
	for (size_t i = 0; i < modules.size(); ++i) {
		const LoraFactors& m = *modules[i];
		const double factor = options.weights[adapter_index[i]] * m.scaling;
		for (size_t k = 0; k < m.a.rows; ++k) {
			for (size_t c = 0; c < in; ++c)
				out.a(offset + k, c) = static_cast<float>(m.a(k, c) * factor);
			for (size_t r = 0; r < out_dim; ++r)
				out.b(r, offset + k) = m.b(r, k);
		}
		offset += m.a.rows;
	}
	return out;
}

// The thin SVD of B·A (B [out, R], A [R, in], R <= out, in) without forming it: with B = Q_b R_b
// and Aᵀ = Q_a R_a, B·A = Q_b (R_b R_aᵀ) Q_aᵀ, so the SVD of the R × R middle gives it.
linalg::SvdD svd_of_product(const linalg::MatrixD& b, const linalg::MatrixD& a) {
	const linalg::MatrixD qb = linalg::orthonormal_columns(b);
	linalg::MatrixD a_t(a.cols, a.rows);
	for (size_t k = 0; k < a.rows; ++k)
		for (size_t c = 0; c < a.cols; ++c)
			a_t(c, k) = a(k, c);
	const linalg::MatrixD qa = linalg::orthonormal_columns(a_t);
	const linalg::MatrixD middle =
	    linalg::matmul(linalg::matmul(qb, true, b, false), false, linalg::matmul(a_t, true, qa, false), false);
	const linalg::SvdD small = linalg::svd(middle);
	return {linalg::matmul(qb, false, small.U, false), small.S, linalg::matmul(small.Vt, false, qa, true)};
}

// Plain svd: Σ_i (w_i s_i) s_i B_i A_i is the product of the stacked factors, whose SVD needs no
// out × in matrix (the result is the full SVD's, to rounding).
std::optional<linalg::SvdD> svd_of_weighted_sum(const CombineOptions& options,
                                                const std::vector<const LoraFactors*>& modules,
                                                const std::vector<size_t>& adapter_index, size_t rank) {
	const size_t out = modules.front()->b.rows, in = modules.front()->a.cols;
	size_t total = 0;
	for (const LoraFactors* m : modules)
		total += m->a.rows;
	// Beyond the sum's rank the dense SVD's vectors are arbitrary yet enter the clamp's quantile.
	if (total == 0 || total > std::min(out, in) || rank > total) return std::nullopt;
	linalg::MatrixD b(out, total), a(total, in);
	size_t offset = 0;
	for (size_t i = 0; i < modules.size(); ++i) {
		const LoraFactors& m = *modules[i];
		const double factor = options.weights[adapter_index[i]] * m.scaling * m.scaling;
		for (size_t k = 0; k < m.a.rows; ++k) {
			for (size_t c = 0; c < in; ++c)
				a(offset + k, c) = m.a(k, c);
			for (size_t r = 0; r < out; ++r)
				b(r, offset + k) = factor * m.b(r, k);
		}
		offset += m.a.rows;
	}
	return svd_of_product(b, a);
}

// The SVD family: the updates s·B·A merged with weights w·s, then re-factorised.
LoraFactors combine_updates(const CombineOptions& options, const std::string& module_name,
                            const std::vector<const LoraFactors*>& modules, const std::vector<size_t>& adapter_index,
                            size_t rank) {
	if (options.type == CombinationType::Svd)
		if (auto svd = svd_of_weighted_sum(options, modules, adapter_index, rank))
			return factors_from_svd(*svd, rank, options.svd_clamp);
	std::vector<double> weights;
	std::vector<std::vector<double>> tasks;
	for (size_t i = 0; i < modules.size(); ++i) {
		weights.push_back(options.weights[adapter_index[i]] * modules[i]->scaling);
		tasks.push_back(delta_weight(*modules[i]).data);
	}
	linalg::MatrixD merged(modules.front()->b.rows, modules.front()->a.cols);
	merged.data = merge_tensors(options, std::move(tasks), weights, module_name + ".delta", adapter_index);
	return factorize_truncated(merged, rank, options.svd_clamp);
}

// torch.quantile's default (linear interpolation between the two nearest ranks).
double quantile(std::vector<double> values, double q) {
	std::sort(values.begin(), values.end());
	const double position = q * static_cast<double>(values.size() - 1);
	const auto below = static_cast<size_t>(std::floor(position));
	const size_t above = std::min(below + 1, values.size() - 1);
	return values[below] + (values[above] - values[below]) * (position - static_cast<double>(below));
}

void check_module(const std::string& module_name, const std::vector<const LoraFactors*>& modules) {
	if (modules.empty()) throw Error(fmt::format("module '{}': no adapter has it", module_name));
	const auto& first = *modules.front();
	for (const LoraFactors* m : modules) {
		if (m->a.rows != m->b.cols)
			throw Error(fmt::format("module '{}': lora_A has rank {} but lora_B has rank {}", module_name, m->a.rows,
			                        m->b.cols));
		if (m->a.cols != first.a.cols || m->b.rows != first.b.rows)
			throw Error(fmt::format("module '{}': adapters update weights of different shapes ([{}, {}] and [{}, {}]); "
			                        "they were trained on different base models",
			                        module_name, first.b.rows, first.a.cols, m->b.rows, m->a.cols));
	}
}

} // namespace

CombinationType parse_combination_type(std::string_view name) {
	for (const auto& [known, type] : kTypeNames)
		if (known == name) return type;
	std::vector<std::string_view> names;
	for (const auto& entry : kTypeNames)
		names.push_back(entry.first);
	throw Error(fmt::format("unknown combination type '{}' (known: {})", name, fmt::join(names, ", ")));
}

std::string_view to_string(CombinationType type) {
	for (const auto& [name, known] : kTypeNames)
		if (known == type) return name;
	return "?";
}

bool is_svd_type(CombinationType type) {
	return to_string(type).ends_with("svd");
}

bool uses_density(CombinationType type) {
	return merge_rule(type).prune != Prune::None;
}

bool uses_majority_sign(CombinationType type) {
	return merge_rule(type).sum == Sum::Disjoint;
}

MajoritySign parse_majority_sign(std::string_view name) {
	if (name == "total") return MajoritySign::Total;
	if (name == "frequency") return MajoritySign::Frequency;
	throw Error(fmt::format("unknown majority sign method '{}' (known: total, frequency)", name));
}

size_t combined_rank(const CombineOptions& options, const std::vector<size_t>& adapter_ranks) {
	if (adapter_ranks.empty()) throw Error("no adapters to combine");
	const size_t largest = *std::max_element(adapter_ranks.begin(), adapter_ranks.end());
	if (options.type == CombinationType::Cat)
		return std::accumulate(adapter_ranks.begin(), adapter_ranks.end(), size_t{0});
	if (is_svd_type(options.type)) return options.svd_rank.value_or(largest);
	if (std::any_of(adapter_ranks.begin(), adapter_ranks.end(), [&](size_t r) { return r != largest; }))
		throw Error(fmt::format("combination type {} needs adapters of one rank r, got ranks {}; use cat or an "
		                        "svd type",
		                        to_string(options.type), fmt::join(adapter_ranks, ", ")));
	return largest;
}

void check_options(const CombineOptions& options, size_t adapter_count) {
	if (options.weights.size() != adapter_count)
		throw Error(fmt::format("--weights gives {} weights for {} adapters", options.weights.size(), adapter_count));
	for (double w : options.weights)
		if (!std::isfinite(w)) throw Error(fmt::format("--weights: {} is not a finite number", w));
	if (uses_density(options.type)) {
		if (!options.density) throw Error(fmt::format("combination type {} needs --density", to_string(options.type)));
		const double d = *options.density;
		if (!(d >= 0) || !std::isfinite(d)) throw Error(fmt::format("--density {} must be >= 0", d));
		if (merge_rule(options.type).prune == Prune::Random && d == 0)
			throw Error("--density 0 drops every value and DARE's rescaling divides by it; use a density > 0");
	}
	if (options.svd_rank && *options.svd_rank == 0) throw Error("--svd-rank must be at least 1");
	if (options.svd_clamp && !(*options.svd_clamp >= 0 && *options.svd_clamp <= 1))
		throw Error(fmt::format("--svd-clamp {} must be a quantile in [0, 1]", *options.svd_clamp));
}

LoraFactors combine_module(const CombineOptions& options, const std::string& module_name,
                           const std::vector<const LoraFactors*>& modules, const std::vector<size_t>& adapter_index,
                           size_t rank) {
	check_module(module_name, modules);
	if (options.type == CombinationType::Cat) return concatenate(options, modules, adapter_index, rank);
	if (is_svd_type(options.type)) return combine_updates(options, module_name, modules, adapter_index, rank);
	for (const LoraFactors* m : modules)
		if (m->a.rows != rank)
			throw Error(fmt::format("module '{}': combination type {} needs rank {} in every adapter, got {}",
			                        module_name, to_string(options.type), rank, m->a.rows));
	return combine_factors(options, module_name, modules, adapter_index);
}

LoraFactors refactorize(const LoraFactors& factors, size_t rank, std::optional<double> clamp) {
	const size_t inner = factors.a.rows;
	if (inner == 0 || inner > std::min(factors.b.rows, factors.a.cols) || rank > inner)
		return factorize_truncated(delta_weight(factors), rank, clamp);
	linalg::MatrixD a(factors.a.rows, factors.a.cols), b(factors.b.rows, factors.b.cols);
	std::copy(factors.a.data.begin(), factors.a.data.end(), a.data.begin());
	std::transform(factors.b.data.begin(), factors.b.data.end(), b.data.begin(),
	               [&](float v) { return static_cast<double>(v) * factors.scaling; });
	return factors_from_svd(svd_of_product(b, a), rank, clamp);
}

linalg::MatrixD delta_weight(const LoraFactors& factors) {
	linalg::MatrixD a(factors.a.rows, factors.a.cols), b(factors.b.rows, factors.b.cols);
	std::copy(factors.a.data.begin(), factors.a.data.end(), a.data.begin());
	std::transform(factors.b.data.begin(), factors.b.data.end(), b.data.begin(),
	               [&](float v) { return static_cast<double>(v) * factors.scaling; });
	return linalg::matmul(b, false, a, false);
}

LoraFactors factorize_truncated(const linalg::MatrixD& delta, size_t rank, std::optional<double> clamp) {
	// A 4096² update's full SVD takes minutes; its top triplets from the Gram matrix, seconds.
	const bool few = 4 * rank <= std::min(delta.rows, delta.cols);
	return factors_from_svd(few ? linalg::top_singular_triplets(delta, rank) : linalg::svd(delta), rank, clamp);
}

LoraFactors factors_from_svd(const linalg::SvdD& svd, size_t rank, std::optional<double> clamp) {
	const size_t rows = svd.U.rows, cols = svd.Vt.cols;
	const size_t kept = std::min(rank, svd.S.size());
	std::vector<double> us(rows * kept), vt(kept * cols);
	for (size_t r = 0; r < rows; ++r)
		for (size_t k = 0; k < kept; ++k)
			us[r * kept + k] = svd.U(r, k) * svd.S[k];
	for (size_t k = 0; k < kept; ++k)
		for (size_t c = 0; c < cols; ++c)
			vt[k * cols + c] = svd.Vt(k, c);
	if (clamp && !us.empty()) {
		std::vector<double> all(us);
		all.insert(all.end(), vt.begin(), vt.end());
		const double high = quantile(std::move(all), *clamp), low = -high;
		// As torch.clamp: min(max(x, low), high), so every value becomes high when low > high.
		for (auto* values : {&us, &vt})
			for (double& v : *values)
				v = std::min(std::max(v, low), high);
	}
	LoraFactors out{linalg::MatrixF(rank, cols), linalg::MatrixF(rows, rank), 1.0};
	for (size_t r = 0; r < rows; ++r)
		for (size_t k = 0; k < kept; ++k)
			out.b(r, k) = static_cast<float>(us[r * kept + k]);
	for (size_t k = 0; k < kept; ++k)
		for (size_t c = 0; c < cols; ++c)
			out.a(k, c) = static_cast<float>(vt[k * cols + c]);
	return out;
}

} // namespace weld::lora
