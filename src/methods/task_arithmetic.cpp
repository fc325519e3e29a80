// The task-arithmetic family, configured like mergekit's GeneralizedTaskArithmeticMerge:
// task vectors (source - base) are optionally sparsified (TIES: top-k by magnitude; DARE:
// random drop; Breadcrumbs: magnitude band; DELLA: rank-dependent random drop), weighted,
// optionally sign-elected (TIES), summed, optionally masked by consensus (TALL masks), scaled
// and added back to the base.
#include "methods/task_arithmetic.h"
#include "methods/methods.h"
#include "tensor/kernels.h"
#include "tensor/tall.h"
#include "util/error.h"

#include <cmath>
#include <fmt/format.h>

namespace weld {
namespace {

// One non-base source. delta holds the sparsified task vector; empty means nothing was dropped
// and the delta is computed on the fly (saves a full copy for plain task arithmetic).
struct TaskVector {
	size_t source;
	std::span<const float> x;
	double weight;
	std::vector<float> delta;
	float at(std::span<const float> base, size_t j) const { return delta.empty() ? x[j] - base[j] : delta[j]; }
};

ParamDef flag(std::string name, bool value, std::string help) {
	return {.name = std::move(name), .type = ParamType::Bool, .default_value = value ? 1.0 : 0.0, .help = help};
}

ParamDef fraction(std::string name, double value, std::string help, bool zero_allowed) {
	return {.name = std::move(name),
	        .default_value = value,
	        .help = std::move(help),
	        .min_value = 0,
	        .max_value = 1,
	        .min_exclusive = !zero_allowed};
}

class GtaMethod final : public MergeMethod {
public:
	explicit GtaMethod(GtaConfig config) : config_(std::move(config)) {
		info_ = {
		    .name = config_.name,
		    .description = config_.description,
		    .reference = config_.reference,
		    .global_params = {flag("int8_mask", false, "Accepted for mergekit compatibility; no effect in float32"),
		                      flag("normalize", config_.default_normalize, "Divide the summed deltas by the weights"),
		                      flag("rescale", config_.default_rescale, "Rescale sparsified deltas to their L1 norm"),
		                      {.name = "lambda", .default_value = 1.0, .help = "Scale of the merged delta"}},
		    .model_params = {{.name = "weight",
		                      .required = !config_.tall_consensus,
		                      .default_value = 1.0,
		                      .help = "Weight of this model's task vector"},
		                     fraction("density", 1.0, "Fraction of delta elements to keep", false)},
		    .base = BaseModel::Required,
		};
		auto& model = info_.model_params;
		if (config_.sparsification == Sparsification::MagnitudeOutliers)
			model.push_back(fraction("gamma", 0.01, "Fraction of largest-magnitude deltas dropped as outliers", true));
		if (config_.sparsification == Sparsification::DellaMagprune)
			model.push_back(fraction("epsilon", 0.15, "Half-width of the keep-probability range around density", true));
		if (config_.tall_consensus) {
			info_.global_params.push_back({.name = "k",
			                               .default_value = 2,
			                               .help = "Minimum number of tasks whose TALL mask keeps an entry",
			                               .min_value = 0});
			model.push_back({.name = "tall_lambda",
			                 .default_value = 0.6,
			                 .help = "TALL mask threshold: keep where |delta| > tall_lambda * |merged - delta|",
			                 .min_value = 0});
		}
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
			tvs.push_back({i, input.sources[i], weight, sparsified_delta(input, i, density, rescale)});
		}
		mix(input, tvs, out); // out holds the merged delta from here on
		if (config_.tall_consensus) apply_consensus(input, tvs, out);
		const std::span<const float> base = input.sources[base_index];
		const double lambda = global_param(info_, input, "lambda");
		for (size_t j = 0; j < out.size(); ++j)
			out[j] = static_cast<float>(base[j] + static_cast<double>(out[j]) * lambda);
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
		drop(input, source, density, delta);
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

	// Zeroes the dropped elements of one task vector (density < 1).
	void drop(const MergeInput& input, size_t source, double density, std::span<float> delta) const {
		const double n = static_cast<double>(delta.size());
		const uint64_t key = random_stream_key(input.random_seed, input.tensor_name, source);
		switch (config_.sparsification) {
		case Sparsification::None:
			return;
		case Sparsification::Magnitude: {
			const double k = std::floor(density * n);
			if (!(k >= 1))
				throw Error(fmt::format("tensor '{}': {} density {} keeps none of the {} elements of source {}; "
				                        "raise density",
				                        input.tensor_name, config_.name, density, delta.size(), source));
			keep_top_k_by_magnitude(delta, static_cast<size_t>(k));
			return;
		}
		case Sparsification::Random:
			for (size_t j = 0; j < delta.size(); ++j)
				if (!(random_uniform(key, j) < density)) delta[j] = 0.0f;
			return;
		case Sparsification::MagnitudeOutliers: {
			// mergekit: keep int(density n) elements below the int(gamma n) largest, fewer
			// outliers when both do not fit.
			const auto keep = static_cast<size_t>(std::floor(density * n));
			auto top = static_cast<size_t>(std::floor(*source_param(info_, input, source, "gamma") * n));
			top = std::min(top, delta.size() - keep);
			keep_magnitude_band(delta, top, keep);
			return;
		}
		case Sparsification::DellaMagprune: {
			const double epsilon = *source_param(info_, input, source, "epsilon");
			if (!(density - epsilon > 0 && density + epsilon < 1))
				throw Error(fmt::format("tensor '{}': {} needs 0 < density - epsilon and density + epsilon < 1 "
				                        "(source {} has density {} and epsilon {})",
				                        input.tensor_name, config_.name, source, density, epsilon));
			const size_t row = input.shape.empty() ? delta.size() : static_cast<size_t>(input.shape.back());
			della_magprune(delta, row, density, epsilon, key);
			return;
		}
		}
	}

	// out[j] = the merged delta: weighted sum, sign-elected and normalized as configured.
	void mix(const MergeInput& input, const std::vector<TaskVector>& tvs, std::span<float> out) const {
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		const bool normalize = global_param(info_, input, "normalize") != 0;
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
			if (config_.sign_election) {
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
			out[j] = static_cast<float>(mixed);
		}
	}

	// Zeroes the merged delta where fewer than k tasks' TALL masks (built from the raw task
	// vectors against the merged delta, before lambda) keep the entry.
	void apply_consensus(const MergeInput& input, const std::vector<TaskVector>& tvs, std::span<float> mtl) const {
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		std::vector<std::vector<uint8_t>> masks(tvs.size(), std::vector<uint8_t>(mtl.size()));
		std::vector<float> raw(mtl.size());
		for (size_t t = 0; t < tvs.size(); ++t) {
			for (size_t j = 0; j < raw.size(); ++j)
				raw[j] = tvs[t].x[j] - base[j];
			tall_mask(mtl, raw, *source_param(info_, input, tvs[t].source, "tall_lambda"), masks[t]);
		}
		std::vector<uint8_t> keep;
		consensus_mask(masks, global_param(info_, input, "k"), keep);
		for (size_t j = 0; j < mtl.size(); ++j)
			if (keep.empty() || !keep[j]) mtl[j] = 0.0f;
	}
};

constexpr const char* kDareReference = "https://arxiv.org/abs/2311.03099";

} // namespace

std::unique_ptr<MergeMethod> make_gta_method(GtaConfig config) {
	return std::make_unique<GtaMethod>(std::move(config));
}

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
