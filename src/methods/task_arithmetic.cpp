// The task-arithmetic family, configured like mergekit's GeneralizedTaskArithmeticMerge:
// task vectors (source - base) are optionally sparsified (TIES: top-k by magnitude; DARE:
// random drop), weighted, optionally sign-elected (TIES), summed and added back to the base.
#include "methods/methods.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <cmath>
#include <fmt/format.h>

namespace weld {
namespace {

enum class Sparsification { None, Magnitude, Random };

struct GtaConfig {
	std::string name, description, reference;
	Sparsification sparsification;
	bool consensus; // TIES sign election ("sum" in mergekit)
	bool default_normalize, default_rescale;
};

// One non-base source. delta holds the sparsified task vector; empty means nothing was dropped
// and the delta is computed on the fly (saves a full copy for plain task arithmetic).
struct TaskVector {
	std::span<const float> x;
	double weight;
	std::vector<float> delta;
	float at(std::span<const float> base, size_t j) const { return delta.empty() ? x[j] - base[j] : delta[j]; }
};

class GtaMethod final : public MergeMethod {
public:
	explicit GtaMethod(GtaConfig config) : config_(std::move(config)) {
		const auto flag = [](std::string name, bool value, std::string help) {
			return ParamDef{.name = name, .type = ParamType::Bool, .default_value = value ? 1.0 : 0.0, .help = help};
		};
		info_ = {
		    .name = config_.name,
		    .description = config_.description,
		    .reference = config_.reference,
		    .global_params = {flag("int8_mask", false, "Accepted for mergekit compatibility; no effect in float32"),
		                      flag("normalize", config_.default_normalize, "Divide the summed deltas by the weights"),
		                      flag("rescale", config_.default_rescale, "Rescale sparsified deltas to their L1 norm"),
		                      {.name = "lambda", .default_value = 1.0, .help = "Scale of the merged delta"}},
		    .model_params = {{.name = "weight", .required = true, .help = "Weight of this model's task vector"},
		                     {.name = "density",
		                      .default_value = 1.0,
		                      .help = "Fraction of delta elements to keep",
		                      .min_value = 0,
		                      .max_value = 1,
		                      .min_exclusive = true}},
		    .base = BaseModel::Required,
		};
	}

	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const bool rescale = global_param(info_, input, "rescale") != 0;
		const auto base_index = static_cast<size_t>(input.base_index);
		std::vector<TaskVector> tvs;
		for (size_t i = 0; i < input.sources.size(); ++i) {
			if (i == base_index) continue;
			const double weight = *source_param(info_, input, i, "weight");
			const double density = *source_param(info_, input, i, "density");
			tvs.push_back({input.sources[i], weight, sparsified_delta(input, i, density, rescale)});
		}
		combine(input, tvs, out);
	}

private:
	GtaConfig config_;
	MethodInfo info_;

	std::vector<float> sparsified_delta(const MergeInput& input, size_t source, double density, bool rescale) const {
		const std::span<const float> x = input.sources[source];
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		if (config_.sparsification == Sparsification::None || density >= 1 || x.empty()) return {};
		std::vector<float> delta(x.size());
		for (size_t j = 0; j < x.size(); ++j)
			delta[j] = x[j] - base[j];
		const double l1_before = rescale ? l1_norm(delta) : 0;
		if (config_.sparsification == Sparsification::Magnitude) {
			const double k = std::floor(density * static_cast<double>(x.size()));
			if (!(k >= 1))
				throw Error(fmt::format("tensor '{}': {} density {} keeps none of the {} elements of source {}; "
				                        "raise density",
				                        input.tensor_name, config_.name, density, x.size(), source));
			keep_top_k_by_magnitude(delta, static_cast<size_t>(k));
		} else {
			const uint64_t key = random_stream_key(input.random_seed, input.tensor_name, source);
			for (size_t j = 0; j < delta.size(); ++j)
				if (!(random_uniform(key, j) < density)) delta[j] = 0.0f;
		}
		if (rescale) {
			// Restore the task vector's L1 norm, unless either norm is too small to divide by.
			const double l1_after = l1_norm(delta);
			if (l1_before >= 1e-7 && l1_after >= 1e-7) {
				const auto factor = static_cast<float>(l1_before / l1_after);
				for (float& d : delta)
					d *= factor;
			}
		}
		return delta;
	}

	void combine(const MergeInput& input, const std::vector<TaskVector>& tvs, std::span<float> out) const {
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		const bool normalize = global_param(info_, input, "normalize") != 0;
		const double lambda = global_param(info_, input, "lambda");
		double weight_sum = 0;
		for (const TaskVector& tv : tvs)
			weight_sum += tv.weight;
		const double plain_divisor = std::fabs(weight_sum) < 1e-8 ? 1.0 : weight_sum;
		std::vector<double> weighted(tvs.size());
		for (size_t j = 0; j < out.size(); ++j) {
			double mixed = 0, divisor = plain_divisor;
			for (size_t i = 0; i < tvs.size(); ++i) {
				weighted[i] = tvs[i].weight * static_cast<double>(tvs[i].at(base, j));
				mixed += weighted[i];
			}
			if (config_.consensus) {
				// Majority sign of the summed weighted deltas; only deltas of that sign (and
				// their weights) count. Zeros match neither sign.
				const double sign = mixed >= 0 ? 1.0 : -1.0;
				mixed = 0;
				divisor = 0;
				for (size_t i = 0; i < tvs.size(); ++i) {
					if (!(sign > 0 ? weighted[i] > 0 : weighted[i] < 0)) continue;
					mixed += weighted[i];
					divisor += tvs[i].weight;
				}
				if (divisor == 0) divisor = 1;
			}
			if (normalize) mixed /= divisor;
			out[j] = static_cast<float>(base[j] + mixed * lambda);
		}
	}
};

constexpr const char* kDareReference = "https://arxiv.org/abs/2311.03099";

} // namespace

const MergeMethod& task_arithmetic_method() {
	static const GtaMethod method({"task_arithmetic", "Adds the weighted task vectors (model - base) to the base",
	                               "https://arxiv.org/abs/2212.04089", Sparsification::None, false, false, false});
	return method;
}

const MergeMethod& ties_method() {
	static const GtaMethod method({"ties", "Task arithmetic with top-k magnitude pruning and sign election",
	                               "https://arxiv.org/abs/2306.01708", Sparsification::Magnitude, true, true, false});
	return method;
}

const MergeMethod& dare_linear_method() {
	static const GtaMethod method({"dare_linear", "Task arithmetic with random drop and rescale (DARE)", kDareReference,
	                               Sparsification::Random, false, false, true});
	return method;
}

const MergeMethod& dare_ties_method() {
	static const GtaMethod method({"dare_ties", "DARE random drop and rescale with TIES sign election", kDareReference,
	                               Sparsification::Random, true, false, true});
	return method;
}

} // namespace weld
