// CABS (Conflict-Aware and Balanced Sparsification, Yang et al. 2025,
// https://arxiv.org/abs/2503.01874) as mergekit's open pull request #568 (cabs.py) defines it:
// the task vectors are taken in turn (pruning_order, else the model references sorted by name);
// each keeps, in every block of m consecutive elements (flattened, zero-padded), its n largest
// magnitudes among the positions no earlier model kept, and is added to the base times its
// weight. Positions a model keeps, zeros included, are closed to the models after it.
//
// Streamed: every model's groups tile a unit of lcm(m) elements, so units are merged on their
// own, by the same code. A unit inside one block is merged there; one that crosses a block
// boundary is gathered in a statistics pass (its parts held until it is complete) and its output
// kept until the output pass: at most one unit per block boundary.
#include "methods/methods.h"
#include "methods/reference.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <memory>
#include <mutex>
#include <numeric>
#include <unordered_map>

namespace weld {
namespace {

// mergekit's fallback when neither the model nor the recipe gives n and m.
constexpr double kFallbackN = 1, kFallbackM = 4;

// Longer units stay whole tensors: the crossing units' outputs would grow to a copy of the tensor.
constexpr uint64_t kMaxStreamedUnit = 1024;

struct NmPair {
	size_t n = 0, m = 0;
};

// The models in the order they claim positions, with their n:m and weights.
struct CabsModels {
	std::vector<size_t> sources;
	std::vector<NmPair> nm;
	std::vector<double> weights;
};

// Keeps the n largest magnitudes of candidate[start, start + length) (equal magnitudes: lower
// index first; the zero padding of a short last block never outranks a real element, so the
// block simply holds fewer) and marks them taken; zeroes the rest.
void keep_block(std::vector<float>& candidate, std::vector<uint8_t>& taken, size_t start, size_t length, size_t n) {
	// Keys that order like (magnitude descending, index ascending), all distinct: the n largest
	// keys are what a stable sort by descending magnitude puts first. A selection, not a sort.
	const auto key = [&](size_t r) {
		return uint64_t{std::bit_cast<uint32_t>(std::fabs(candidate[start + r]))} << 32 | (0xFFFFFFFFu - r);
	};
	if (length <= 64 && n < length) {
		// Short blocks (m is usually 4 to 64): an element is kept when fewer than n keys exceed
		// its own; the count over the block vectorizes, with no branch to mispredict.
		uint64_t keys[64];
		for (size_t r = 0; r < length; ++r)
			keys[r] = key(r);
		for (size_t r = 0; r < length; ++r) {
			size_t above = 0;
			for (size_t q = 0; q < length; ++q)
				above += keys[q] > keys[r] ? 1 : 0;
			if (above < n)
				taken[start + r] = 1;
			else
				candidate[start + r] = 0.0f;
		}
		return;
	}
	uint64_t smallest_kept = ~uint64_t{0}; // n = 0: nothing is kept
	if (n >= length) {
		smallest_kept = 0;
	} else if (n > 0) {
		thread_local std::vector<uint64_t> keys;
		keys.resize(length);
		for (size_t r = 0; r < length; ++r)
			keys[r] = key(r);
		std::nth_element(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(n - 1), keys.end(), std::greater<>());
		smallest_kept = keys[n - 1];
	}
	for (size_t r = 0; r < length; ++r) {
		if (key(r) >= smallest_kept)
			taken[start + r] = 1;
		else
			candidate[start + r] = 0.0f;
	}
}

// CABS on elements of the tensor whose first is a multiple of every m (the whole tensor, or a
// unit): sources[s] holds source s's values there (models.sources index it).
void cabs_merge(const CabsModels& models, std::span<const std::span<const float>> sources, size_t base,
                std::span<float> out) {
	const std::span<const float> base_values = sources[base];
	std::copy(base_values.begin(), base_values.end(), out.begin());
	std::vector<uint8_t> taken(out.size(), 0);
	std::vector<float> candidate(out.size());
	for (size_t i = 0; i < models.sources.size(); ++i) {
		const NmPair nm = models.nm[i];
		const double weight = models.weights[i];
		for (size_t j = 0; j < out.size(); ++j)
			candidate[j] = taken[j] ? 0.0f : sources[models.sources[i]][j] - base_values[j];
		for (size_t start = 0; start < out.size(); start += nm.m)
			keep_block(candidate, taken, start, std::min(nm.m, out.size() - start), nm.n);
		for (size_t j = 0; j < out.size(); ++j)
			out[j] = static_cast<float>(out[j] + weight * candidate[j]);
	}
}

// Units of `unit` elements (the last one shorter); no statistics unless a unit crosses a block.
class CabsUnits final : public BlockMerge {
public:
	CabsUnits(CabsModels models, size_t sources, size_t base, uint64_t unit, uint64_t elements)
	    : models_(std::move(models)), sources_(sources), base_(base), unit_(unit), elements_(elements) {}

	int stat_passes() const override { return 1; }
	bool wants_pass(int) const override { return kBlockElements % unit_ != 0 && elements_ > kBlockElements; }
	void observe(int, const Block& block, unsigned) override;
	void end_pass(int) override {
		if (!pending_.empty()) throw Error("cabs: a unit crossing blocks was not gathered whole");
	}
	void merge(const Block& block, std::span<float> out, unsigned) override;

private:
	struct Pending {
		std::vector<std::vector<float>> values; // per source
		uint64_t filled = 0;
	};
	uint64_t unit_length(uint64_t unit) const { return std::min(unit_, elements_ - unit * unit_); }
	bool crosses(uint64_t unit) const {
		const uint64_t first = unit * unit_;
		return first / kBlockElements != (first + unit_length(unit) - 1) / kBlockElements;
	}
	void gather(uint64_t unit, const Block& block, uint64_t begin, uint64_t end);
	void copy_merged(uint64_t unit, const Block& block, uint64_t begin, uint64_t end, std::span<float> out) const;

	CabsModels models_;
	size_t sources_, base_;
	uint64_t unit_, elements_;
	std::mutex mutex_;
	std::unordered_map<uint64_t, Pending> pending_;           // crossing units being gathered
	std::unordered_map<uint64_t, std::vector<float>> merged_; // crossing units' outputs
};

// The parts of the units that cross the block's first and last element.
void CabsUnits::observe(int, const Block& block, unsigned) {
	const uint64_t first = block.offset, end = block.offset + block.size();
	if (crosses(first / unit_)) gather(first / unit_, block, first, std::min(end, (first / unit_ + 1) * unit_));
	if (const uint64_t last = (end - 1) / unit_; last != first / unit_ && crosses(last))
		gather(last, block, last * unit_, end);
}

// Copies elements [begin, end) of a crossing unit; merges the unit once every part is in.
void CabsUnits::gather(uint64_t unit, const Block& block, uint64_t begin, uint64_t end) {
	const uint64_t length = unit_length(unit), first = unit * unit_;
	std::vector<std::vector<float>> complete;
	{
		const std::lock_guard lock(mutex_);
		Pending& p = pending_[unit];
		if (p.values.empty()) p.values.assign(sources_, std::vector<float>(length));
		for (size_t s = 0; s < sources_; ++s)
			std::copy(block.sources[s].begin() + static_cast<ptrdiff_t>(begin - block.offset),
			          block.sources[s].begin() + static_cast<ptrdiff_t>(end - block.offset),
			          p.values[s].begin() + static_cast<ptrdiff_t>(begin - first));
		if ((p.filled += end - begin) < length) return;
		complete = std::move(p.values);
		pending_.erase(unit);
	}
	const std::vector<std::span<const float>> views(complete.begin(), complete.end());
	std::vector<float> out(length);
	cabs_merge(models_, views, base_, out);
	const std::lock_guard lock(mutex_);
	merged_[unit] = std::move(out);
}

// Units inside the block are merged together (their first element is a multiple of every m);
// the parts of crossing units come from the statistics pass.
void CabsUnits::merge(const Block& block, std::span<float> out, unsigned) {
	const uint64_t end = block.offset + block.size(), head = block.offset / unit_, tail = (end - 1) / unit_;
	uint64_t begin = block.offset, stop = end;
	if (crosses(head)) {
		begin = std::min(end, head * unit_ + unit_length(head));
		copy_merged(head, block, block.offset, begin, out);
	}
	if (tail != head && crosses(tail)) {
		stop = tail * unit_;
		copy_merged(tail, block, stop, end, out);
	}
	if (begin >= stop) return;
	std::vector<std::span<const float>> views(sources_);
	for (size_t s = 0; s < sources_; ++s)
		views[s] = block.sources[s].subspan(begin - block.offset, stop - begin);
	cabs_merge(models_, views, base_, out.subspan(begin - block.offset, stop - begin));
}

// Copies elements [begin, end) of a crossing unit's output to their place in the block's out.
void CabsUnits::copy_merged(uint64_t unit, const Block& block, uint64_t begin, uint64_t end,
                            std::span<float> out) const {
	const std::vector<float>& merged = merged_.at(unit);
	const uint64_t first = unit * unit_;
	std::copy(merged.begin() + static_cast<ptrdiff_t>(begin - first),
	          merged.begin() + static_cast<ptrdiff_t>(end - first),
	          out.begin() + static_cast<ptrdiff_t>(begin - block.offset));
}

class CabsMethod final : public MergeMethod, public WholeTensorReference {
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
		if (const auto kernel = block_merge(input, input.sources.size(), out.size(), 1))
			return merge_in_blocks(*kernel, input, out);
		merge_whole(input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned) const override {
		check_source_count(info_, input, source_count);
		CabsModels models = ordered_models(input, source_count);
		uint64_t unit = 1; // lcm of the m values
		for (const NmPair& nm : models.nm)
			if ((unit = std::lcm(unit, static_cast<uint64_t>(nm.m))) > kMaxStreamedUnit) return nullptr;
		return std::make_unique<CabsUnits>(std::move(models), source_count, static_cast<size_t>(input.base_index), unit,
		                                   elements);
	}

	// The whole-tensor form, kept as the reference of the streamed one (and used for long units).
	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		cabs_merge(ordered_models(input, input.sources.size()), input.sources, static_cast<size_t>(input.base_index),
		           out);
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

	// The non-base sources of source_count with a place in the order, by that place, with their
	// n:m and weights.
	CabsModels ordered_models(const MergeInput& input, size_t source_count) const {
		CabsModels models;
		for (size_t s : ordered_sources(input, source_count)) {
			models.sources.push_back(s);
			models.nm.push_back(n_and_m(input, s));
			models.weights.push_back(*source_param(info_, input, s, "weight"));
		}
		return models;
	}

	static std::vector<size_t> ordered_sources(const MergeInput& input, size_t source_count) {
		std::vector<size_t> order;
		for (size_t s = 0; s < source_count; ++s)
			if (static_cast<int>(s) != input.base_index && place(input, s) >= 0) order.push_back(s);
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
};

} // namespace

const MergeMethod& cabs_method() {
	static const CabsMethod method;
	return method;
}

} // namespace weld
