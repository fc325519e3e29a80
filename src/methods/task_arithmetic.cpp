// The task-arithmetic family, configured like mergekit's GeneralizedTaskArithmeticMerge:
// task vectors (source - base) are optionally sparsified (TIES: top-k by magnitude; DARE:
// random drop; Breadcrumbs: magnitude band; DELLA: rank-dependent random drop), weighted,
// optionally sign-elected (TIES), summed, optionally masked by consensus (TALL masks), scaled
// and added back to the base.
#include "methods/task_arithmetic.h"
#include "methods/methods.h"
#include "methods/reference.h"
#include "tensor/kernels.h"
#include "tensor/magprune.h"
#include "tensor/tall.h"
#include "tensor/topk.h"
#include "util/error.h"

#include <algorithm>
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

// How the sparsified, weighted task vectors combine into the merged delta at each element.
struct MixRule {
	std::vector<double> weights; // per task vector
	bool sign_election = false;  // TIES: only deltas of the majority sign (of the sum) count
	bool normalize = false;      // divide by the weights that took part
	double plain_divisor = 1;    // the weight sum (1 when ~0), used without sign election
};

constexpr size_t kMixChunk = 512;

// out[j] = merged delta at j from deltas[i][j] (i over task vectors), for count <= kMixChunk.
// Loops run over elements innermost, branch-free, so they vectorize; sums follow the
// task-vector order. Sign election sweeps twice: the sign of the total first, then the sum of
// the deltas (and weights) that agree with it; zeros agree with neither sign.
void mix_chunk(const MixRule& rule, std::span<const float* const> deltas, size_t count, float* out) {
	double total[kMixChunk], sign[kMixChunk], agreeing[kMixChunk], agreeing_weight[kMixChunk];
	std::fill_n(total, count, 0.0);
	for (size_t i = 0; i < deltas.size(); ++i) {
		const double w = rule.weights[i];
		const float* d = deltas[i];
		for (size_t j = 0; j < count; ++j)
			total[j] += w * static_cast<double>(d[j]);
	}
	if (!rule.sign_election) {
		const double divisor = rule.normalize ? rule.plain_divisor : 1.0;
		for (size_t j = 0; j < count; ++j)
			out[j] = static_cast<float>(total[j] / divisor);
		return;
	}
	for (size_t j = 0; j < count; ++j) {
		sign[j] = total[j] >= 0 ? 1.0 : -1.0;
		agreeing[j] = agreeing_weight[j] = 0;
	}
	for (size_t i = 0; i < deltas.size(); ++i) {
		const double w = rule.weights[i];
		const float* d = deltas[i];
		for (size_t j = 0; j < count; ++j) {
			const double weighted = w * static_cast<double>(d[j]);
			const bool agree = weighted * sign[j] > 0;
			agreeing[j] += agree ? weighted : 0.0;
			agreeing_weight[j] += agree ? w : 0.0;
		}
	}
	for (size_t j = 0; j < count; ++j) {
		const double divisor = !rule.normalize ? 1.0 : agreeing_weight[j] == 0 ? 1.0 : agreeing_weight[j];
		out[j] = static_cast<float>(agreeing[j] / divisor);
	}
}

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

// Consensus merging's TALL masks (GtaConfig::tall_consensus), applied to the merged delta.
struct ConsensusRule {
	bool on = false;
	double k = 0;
	std::vector<double> tall_lambdas; // per task vector
};

// The streaming form of the whole family. Statistics passes, as needed: the three passes of
// the exact top-k selections (TIES: the kept; Breadcrumbs: the band's two edges), in whose
// first pass DELLA gathers the rows that cross blocks; then the L1 norms before and after the
// drop (rescale). The output pass recomputes each block's deltas, sparsifies, rescales and
// mixes them, and masks the mix by consensus (TALL masks of the raw deltas).
class GtaBlocks final : public BlockMerge {
public:
	struct Source {
		size_t index;                            // into the block's sources
		Sparsification drop;                     // as configured, or None (density 1)
		double density;                          // Random: keep probability
		uint64_t random_key = 0;                 // Random
		std::unique_ptr<TopKSelection> top_k;    // Magnitude: the kept; Outliers: skip + keep largest
		std::unique_ptr<TopKSelection> skip;     // MagnitudeOutliers: the gamma largest (none: nullptr)
		bool drop_all = false;                   // MagnitudeOutliers keeping none
		std::unique_ptr<RowMagprune> magprune;   // DellaMagprune
		std::vector<double> l1_before, l1_after; // per block (rescale)
		float rescale = 1;
	};

	GtaBlocks(std::vector<Source> sources, MixRule rule, ConsensusRule consensus, size_t base, bool rescale,
	          double lambda, unsigned workers)
	    : sources_(std::move(sources)), rule_(std::move(rule)), consensus_(std::move(consensus)), base_(base),
	      lambda_(lambda), scratch_(workers, std::vector<float>(sources_.size() * kBlockElements + kMixChunk)),
	      masks_(workers) {
		for (const Source& s : sources_)
			rescale_ = rescale_ || (rescale && s.drop != Sparsification::None);
	}

	int stat_passes() const override { return TopKSelection::kPasses + 1; }

	bool wants_pass(int pass) const override {
		if (pass == TopKSelection::kPasses) return rescale_;
		for (const Source& s : sources_)
			if (selects(s, pass)) return true;
		return false;
	}

	void observe(int pass, const Block& block, unsigned worker) override {
		float* delta = scratch_[worker].data();
		for (Source& s : sources_) {
			const bool l1_pass = pass == TopKSelection::kPasses;
			if (l1_pass ? s.drop == Sparsification::None : !selects(s, pass)) continue;
			const std::span<float> d = task_vector(block, s, delta);
			if (!l1_pass) {
				if (s.top_k && s.top_k->wants_pass(pass)) s.top_k->observe(pass, block.index, d, worker);
				if (s.skip && s.skip->wants_pass(pass)) s.skip->observe(pass, block.index, d, worker);
				if (pass == 0 && s.magprune && s.magprune->wants_pass()) s.magprune->observe(block.offset, d);
				continue;
			}
			s.l1_before[block.index] = l1_norm(d);
			drop(block, s, d, worker);
			s.l1_after[block.index] = l1_norm(d);
		}
	}

	void end_pass(int pass) override {
		for (Source& s : sources_) {
			if (pass < TopKSelection::kPasses) {
				if (s.top_k && s.top_k->wants_pass(pass)) s.top_k->end_pass(pass);
				if (s.skip && s.skip->wants_pass(pass)) s.skip->end_pass(pass);
				if (pass == 0 && s.magprune && s.magprune->wants_pass()) s.magprune->end_pass();
				continue;
			}
			if (s.drop == Sparsification::None) continue;
			if (s.magprune) s.magprune->end_record();
			double before = 0, after = 0;
			for (size_t b = 0; b < s.l1_before.size(); ++b) {
				before += s.l1_before[b];
				after += s.l1_after[b];
			}
			// Restore the task vector's L1 norm, unless either norm is too small to divide by.
			if (before >= 1e-7 && after >= 1e-7) s.rescale = static_cast<float>(before / after);
		}
	}

	void merge(const Block& block, std::span<float> out, unsigned worker) override {
		float* scratch = scratch_[worker].data();
		std::vector<const float*> deltas;
		for (size_t i = 0; i < sources_.size(); ++i) {
			Source& s = sources_[i];
			const std::span<float> d = task_vector(block, s, scratch + i * kBlockElements);
			drop(block, s, d, worker);
			if (s.rescale != 1)
				for (float& x : d)
					x *= s.rescale;
			deltas.push_back(d.data());
		}
		const std::span<const float> base = block.sources[base_];
		float* mixed = scratch + sources_.size() * kBlockElements;
		for (size_t start = 0; start < out.size(); start += kMixChunk) {
			const size_t count = std::min<size_t>(kMixChunk, out.size() - start);
			mix_chunk(rule_, deltas, count, mixed);
			if (consensus_.on) apply_consensus(block, start, count, mixed);
			for (size_t j = 0; j < count; ++j)
				out[start + j] = static_cast<float>(base[start + j] + static_cast<double>(mixed[j]) * lambda_);
			for (const float*& d : deltas)
				d += count;
		}
	}

private:
	std::vector<Source> sources_;
	MixRule rule_;
	ConsensusRule consensus_;
	size_t base_;
	double lambda_;
	bool rescale_ = false;
	std::vector<std::vector<float>> scratch_; // per worker: a block of deltas per source, mixed
	std::vector<std::vector<uint8_t>> masks_; // per worker: Breadcrumbs' skipped elements of a block

	static bool selects(const Source& s, int pass) {
		return (s.top_k && s.top_k->wants_pass(pass)) || (s.skip && s.skip->wants_pass(pass)) ||
		       (pass == 0 && s.magprune && s.magprune->wants_pass());
	}

	// tall_mask and consensus_mask on elements [start, start + count) of the block: the merged
	// delta (mixed) stays where at least k raw task vectors' masks keep it, else becomes 0.
	// Task vectors outermost, so the element loops vectorize.
	void apply_consensus(const Block& block, size_t start, size_t count, float* mixed) const {
		const float* base = block.sources[base_].data() + start;
		uint32_t agree[kMixChunk] = {};
		for (size_t i = 0; i < sources_.size(); ++i) {
			const float* x = block.sources[sources_[i].index].data() + start;
			const double lambda = consensus_.tall_lambdas[i];
			for (size_t j = 0; j < count; ++j) {
				const double tau = x[j] - base[j];
				const double rest = static_cast<double>(mixed[j]) - tau;
				agree[j] += std::fabs(tau) > lambda * std::fabs(rest) ? 1 : 0;
			}
		}
		for (size_t j = 0; j < count; ++j)
			mixed[j] = static_cast<double>(agree[j]) >= consensus_.k ? mixed[j] : 0.0f;
	}

	std::span<float> task_vector(const Block& block, const Source& s, float* delta) const {
		const std::span<const float> x = block.sources[s.index], base = block.sources[base_];
		for (size_t j = 0; j < x.size(); ++j)
			delta[j] = x[j] - base[j];
		return {delta, x.size()};
	}

	void drop(const Block& block, Source& s, std::span<float> d, unsigned worker) {
		switch (s.drop) {
		case Sparsification::None:
			return;
		case Sparsification::Magnitude:
			s.top_k->apply(block.index, d);
			return;
		case Sparsification::Random:
			random_drop(d, s.random_key, block.offset, s.density);
			return;
		case Sparsification::MagnitudeOutliers: {
			// keep_magnitude_band: zero what is outside the skip + keep largest or inside the skip.
			if (s.drop_all) {
				std::fill(d.begin(), d.end(), 0.0f);
				return;
			}
			std::vector<uint8_t>& skipped = masks_[worker];
			if (s.skip) {
				skipped.resize(kBlockElements);
				s.skip->mark(block.index, d, skipped);
			}
			s.top_k->apply(block.index, d);
			if (s.skip)
				for (size_t j = 0; j < d.size(); ++j)
					if (skipped[j]) d[j] = 0.0f;
			return;
		}
		case Sparsification::DellaMagprune:
			s.magprune->apply(block.offset, d);
			return;
		}
	}
};

class GtaMethod final : public MergeMethod, public WholeTensorReference {
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
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	// The whole-tensor form, kept as the reference of the streamed one: the same but for the
	// rescale's L1 norms, summed over the whole tensor here, per block in block order there.
	void merge_whole(const MergeInput& input, std::span<float> out) const override {
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

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned workers) const override {
		check_source_count(info_, input, source_count);
		const auto base = static_cast<size_t>(input.base_index);
		const uint64_t blocks = block_count(elements);
		const bool rescale = global_param(info_, input, "rescale") != 0;
		std::vector<GtaBlocks::Source> sources;
		std::vector<double> weights;
		ConsensusRule consensus;
		consensus.on = config_.tall_consensus;
		if (consensus.on) consensus.k = global_param(info_, input, "k");
		for (size_t i = 0; i < source_count; ++i) {
			if (i == base) continue;
			weights.push_back(*source_param(info_, input, i, "weight"));
			if (consensus.on) consensus.tall_lambdas.push_back(*source_param(info_, input, i, "tall_lambda"));
			const double density = *source_param(info_, input, i, "density");
			GtaBlocks::Source s;
			s.index = i;
			s.drop = config_.sparsification;
			s.density = density;
			if (density >= 1 || elements == 0) s.drop = Sparsification::None;
			const uint64_t key = random_stream_key(input.random_seed, input.tensor_name, i);
			if (s.drop == Sparsification::Random) s.random_key = key;
			if (s.drop == Sparsification::Magnitude)
				s.top_k = std::make_unique<TopKSelection>(elements, magnitude_keep_count(input, i, density, elements),
				                                          blocks, workers);
			if (s.drop == Sparsification::MagnitudeOutliers) {
				const auto [skip, keep] = band(input, i, density, elements);
				s.drop_all = keep == 0;
				if (!s.drop_all) s.top_k = std::make_unique<TopKSelection>(elements, skip + keep, blocks, workers);
				if (!s.drop_all && skip > 0) s.skip = std::make_unique<TopKSelection>(elements, skip, blocks, workers);
			}
			if (s.drop == Sparsification::DellaMagprune)
				s.magprune = std::make_unique<RowMagprune>(elements, della_row(input, elements), density,
				                                           della_epsilon(input, i, density), key, rescale);
			if (s.drop != Sparsification::None) {
				s.l1_before.resize(block_count(elements));
				s.l1_after.resize(block_count(elements));
			}
			sources.push_back(std::move(s));
		}
		return std::make_unique<GtaBlocks>(std::move(sources), mix_rule(input, weights), std::move(consensus), base,
		                                   rescale, global_param(info_, input, "lambda"), std::max(1u, workers));
	}

private:
	GtaConfig config_;
	MethodInfo info_;

	// Breadcrumbs' band as keep_magnitude_band takes it: {elements skipped, elements kept}.
	// mergekit: keep int(density n) elements below the int(gamma n) largest, fewer outliers when
	// both do not fit.
	std::pair<uint64_t, uint64_t> band(const MergeInput& input, size_t source, double density, uint64_t size) const {
		const double n = static_cast<double>(size);
		const auto keep = static_cast<uint64_t>(std::floor(density * n));
		auto top = static_cast<uint64_t>(std::floor(*source_param(info_, input, source, "gamma") * n));
		top = std::min(top, size - keep);
		return {top, std::min(keep, size - top)};
	}

	// DELLA ranks within rows of the last dimension.
	static uint64_t della_row(const MergeInput& input, uint64_t size) {
		return input.shape.empty() ? size : input.shape.back();
	}

	double della_epsilon(const MergeInput& input, size_t source, double density) const {
		const double epsilon = *source_param(info_, input, source, "epsilon");
		if (!(density - epsilon > 0 && density + epsilon < 1))
			throw Error(fmt::format("tensor '{}': {} needs 0 < density - epsilon and density + epsilon < 1 "
			                        "(source {} has density {} and epsilon {})",
			                        input.tensor_name, config_.name, source, density, epsilon));
		return epsilon;
	}

	// TIES keeps floor(density n) elements; none is an error.
	uint64_t magnitude_keep_count(const MergeInput& input, size_t source, double density, uint64_t n) const {
		const double k = std::floor(density * static_cast<double>(n));
		if (!(k >= 1))
			throw Error(fmt::format("tensor '{}': {} density {} keeps none of the {} elements of source {}; "
			                        "raise density",
			                        input.tensor_name, config_.name, density, n, source));
		return static_cast<uint64_t>(k);
	}

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
		const uint64_t key = random_stream_key(input.random_seed, input.tensor_name, source);
		switch (config_.sparsification) {
		case Sparsification::None:
			return;
		case Sparsification::Magnitude:
			keep_top_k_by_magnitude(delta, magnitude_keep_count(input, source, density, delta.size()));
			return;
		case Sparsification::Random:
			random_drop(delta, key, 0, density);
			return;
		case Sparsification::MagnitudeOutliers: {
			const auto [skip, keep] = band(input, source, density, delta.size());
			keep_magnitude_band(delta, skip, keep);
			return;
		}
		case Sparsification::DellaMagprune:
			della_magprune(delta, della_row(input, delta.size()), density, della_epsilon(input, source, density), key);
			return;
		}
	}

	MixRule mix_rule(const MergeInput& input, const std::vector<double>& weights) const {
		MixRule rule{.weights = weights,
		             .sign_election = config_.sign_election,
		             .normalize = global_param(info_, input, "normalize") != 0};
		double weight_sum = 0;
		for (double w : weights)
			weight_sum += w;
		rule.plain_divisor = std::fabs(weight_sum) < 1e-8 ? 1.0 : weight_sum;
		return rule;
	}

	// out[j] = the merged delta: weighted sum, sign-elected and normalized as configured.
	void mix(const MergeInput& input, const std::vector<TaskVector>& tvs, std::span<float> out) const {
		const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
		std::vector<double> weights;
		for (const TaskVector& tv : tvs)
			weights.push_back(tv.weight);
		const MixRule rule = mix_rule(input, weights);
		std::vector<std::vector<float>> chunk(tvs.size(), std::vector<float>(kMixChunk));
		std::vector<const float*> deltas;
		for (const auto& c : chunk)
			deltas.push_back(c.data());
		for (size_t start = 0; start < out.size(); start += kMixChunk) {
			const size_t count = std::min(kMixChunk, out.size() - start);
			for (size_t i = 0; i < tvs.size(); ++i)
				for (size_t j = 0; j < count; ++j)
					chunk[i][j] = tvs[i].at(base, start + j);
			mix_chunk(rule, deltas, count, out.data() + start);
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
