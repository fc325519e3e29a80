// CABS (Conflict-Aware and Balanced Sparsification, Yang et al. 2025,
// https://arxiv.org/abs/2503.01874) as mergekit's open pull request #568 (cabs.py) defines it:
// the task vectors are taken in turn (pruning_order, else the model references sorted by name);
// each keeps, in every block of m consecutive elements (flattened, zero-padded), its n largest
// magnitudes among the positions no earlier model kept, and is added to the base times its
// weight. Positions a model keeps, zeros included, are closed to the models after it.
#include "methods/methods.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace weld {
namespace {

// mergekit's fallback when neither the model nor the recipe gives n and m.
constexpr double kFallbackN = 1, kFallbackM = 4;

struct NmPair {
	size_t n = 0, m = 0;
};

class CabsMethod final : public MergeMethod {
public:
	CabsMethod() {
		info_ = {
		    .name = "cabs",
		    .description = "CABS: n:m magnitude pruning of each task vector in turn, on positions earlier models left",
		    .reference = "https://arxiv.org/abs/2503.01874",
		    .global_params = {{.name = "default_n_val",
		                       .has_default = false,
		                       .help = "n of n:m for models without their own (with default_m_val)",
		                       .min_value = 0},
		                      {.name = "default_m_val",
		                       .has_default = false,
		                       .help = "m of n:m for models without their own (with default_n_val)",
		                       .min_value = 1},
		                      {.name = "pruning_order",
		                       .type = ParamType::Text,
		                       .has_default = false,
		                       .help = "Models in the order they claim positions (a list of references; models "
		                               "left out take no part); default: references sorted by name"}},
		    .model_params = {{.name = "weight", .default_value = 1.0, .help = "Scale of the pruned task vector"},
		                     {.name = "n_val",
		                      .has_default = false,
		                      .help = "Elements kept in every block of m_val (with m_val)",
		                      .min_value = 0},
		                     {.name = "m_val", .has_default = false, .help = "Block length", .min_value = 1}},
		    .base = BaseModel::Required,
		    .model_order = "pruning_order",
		};
	}

	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		std::copy(base.begin(), base.end(), out.begin());
		std::vector<uint8_t> taken(out.size(), 0);
		std::vector<float> candidate(out.size());
		for (const size_t source : ordered_sources(input)) {
			const NmPair nm = n_and_m(input, source);
			const double weight = *source_param(info_, input, source, "weight");
			for (size_t j = 0; j < out.size(); ++j)
				candidate[j] = taken[j] ? 0.0f : input.sources[source][j] - base[j];
			for (size_t start = 0; start < out.size(); start += nm.m)
				keep_block(candidate, taken, start, std::min(nm.m, out.size() - start), nm.n);
			for (size_t j = 0; j < out.size(); ++j)
				out[j] = static_cast<float>(out[j] + weight * candidate[j]);
		}
	}

private:
	MethodInfo info_;

	// A source's place in the order the plan set (MethodInfo::model_order); without one (a direct
	// call), its place among the sources.
	static double place(const MergeInput& input, size_t source) {
		if (source < input.source_params.size())
			if (const auto it = input.source_params[source].find("pruning_order");
			    it != input.source_params[source].end())
				return it->second;
		return static_cast<double>(source);
	}

	// The non-base sources with a place in the order, by that place.
	static std::vector<size_t> ordered_sources(const MergeInput& input) {
		std::vector<size_t> order;
		for (size_t s : model_indices(input))
			if (place(input, s) >= 0) order.push_back(s);
		std::stable_sort(order.begin(), order.end(),
		                 [&](size_t a, size_t b) { return place(input, a) < place(input, b); });
		return order;
	}

	// The model's own n:m when it gives both, else the recipe's defaults, else 1:4 (mergekit).
	NmPair n_and_m(const MergeInput& input, size_t source) const {
		const auto n = source_param(info_, input, source, "n_val");
		const auto m = source_param(info_, input, source, "m_val");
		const auto has = [&](std::string_view name) { return input.params.contains(name); };
		if (has("default_n_val") != has("default_m_val"))
			throw Error(
			    fmt::format("tensor '{}': cabs needs default_n_val and default_m_val together", input.tensor_name));
		if (n.has_value() != m.has_value())
			throw Error(
			    fmt::format("tensor '{}': cabs needs n_val and m_val together (model {})", input.tensor_name, source));
		if (n) return checked(input, *n, *m, fmt::format("n_val/m_val of model {}", source));
		if (has("default_n_val"))
			return checked(input, input.params.find("default_n_val")->second,
			               input.params.find("default_m_val")->second, "default_n_val/default_m_val");
		return checked(input, kFallbackN, kFallbackM, "fallback");
	}

	static NmPair checked(const MergeInput& input, double n, double m, const std::string& what) {
		if (n != std::floor(n) || m != std::floor(m) || n < 0 || m < 1 || n > m)
			throw Error(fmt::format("tensor '{}': cabs {} is {:g}:{:g}; need whole numbers with 0 <= n <= m, m >= 1",
			                        input.tensor_name, what, n, m));
		return {static_cast<size_t>(n), static_cast<size_t>(m)};
	}

	// Keeps the n largest magnitudes of candidate[start, start + length) (equal magnitudes: lower
	// index first; the zero padding of a short last block never outranks a real element, so the
	// block simply holds fewer) and marks them taken; zeroes the rest.
	static void keep_block(std::vector<float>& candidate, std::vector<uint8_t>& taken, size_t start, size_t length,
	                       size_t n) {
		std::vector<size_t> order(length);
		std::iota(order.begin(), order.end(), start);
		std::stable_sort(order.begin(), order.end(),
		                 [&](size_t a, size_t b) { return std::fabs(candidate[a]) > std::fabs(candidate[b]); });
		for (size_t r = 0; r < length; ++r) {
			if (r < n)
				taken[order[r]] = 1;
			else
				candidate[order[r]] = 0.0f;
		}
	}
};

} // namespace

const MergeMethod& cabs_method() {
	static const CabsMethod method;
	return method;
}

} // namespace weld
