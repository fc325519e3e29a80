// Reinforced Agent Merging (RAM) and its tensor-local RAM+ variant, as mergekit computes them:
// per element, a task vector counts when |model − base| > epsilon; an element changed by one
// model takes that change whole, one changed by several takes their mean. RAM+ scales each
// model's unique changes by 1 + r·clip(shared/unique, 0, alpha), counted over the tensor.
//
// Streamed: RAM needs no statistics; RAM+ counts the changes in one statistics pass.
#include "methods/methods.h"
#include "methods/reference.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>

namespace weld {
namespace {

// One tensor's (or block's) base and models, and RAM's rule for them element by element.
struct RamElements {
	std::span<const float> base;
	std::vector<std::span<const float>> models;
	double epsilon;

	float delta(size_t i, size_t j) const { return models[i][j] - base[j]; }
	bool active(size_t i, size_t j) const { return std::fabs(delta(i, j)) > epsilon; }

	// Chunks of elements with the models outermost, so the element loops vectorize; each
	// element still sums its models in order.
	static constexpr size_t kChunk = 512;

	// How many models change each element of [start, start + count).
	void active_counts(size_t start, size_t count, uint32_t* counts) const {
		std::fill_n(counts, count, 0u);
		for (size_t i = 0; i < models.size(); ++i)
			for (size_t j = 0; j < count; ++j)
				counts[j] += active(i, start + j) ? 1 : 0;
	}

	// RAM+'s counts: per model, its changes shared with another model and its unique ones.
	void count_changes(std::vector<uint64_t>& shared, std::vector<uint64_t>& unique) const {
		uint32_t counts[kChunk];
		for (size_t start = 0; start < base.size(); start += kChunk) {
			const size_t count = std::min(kChunk, base.size() - start);
			active_counts(start, count, counts);
			for (size_t i = 0; i < models.size(); ++i) {
				uint64_t alone = 0, with_others = 0;
				for (size_t j = 0; j < count; ++j) {
					const bool changed = active(i, start + j);
					alone += changed && counts[j] == 1 ? 1 : 0;
					with_others += changed && counts[j] > 1 ? 1 : 0;
				}
				unique[i] += alone, shared[i] += with_others;
			}
		}
	}

	void merge(const std::vector<double>& unique_scale, std::span<float> out) const {
		uint32_t counts[kChunk];
		double sums[kChunk];
		for (size_t start = 0; start < out.size(); start += kChunk) {
			const size_t count = std::min(kChunk, out.size() - start);
			active_counts(start, count, counts);
			std::fill_n(sums, count, 0.0);
			for (size_t i = 0; i < models.size(); ++i)
				for (size_t j = 0; j < count; ++j) {
					const float d = delta(i, start + j); // float, as the mean's division is
					const double term = counts[j] == 1 ? unique_scale[i] * d : d / static_cast<float>(counts[j]);
					sums[j] += active(i, start + j) ? term : 0.0;
				}
			for (size_t j = 0; j < count; ++j)
				out[start + j] = static_cast<float>(base[start + j] + sums[j]);
		}
	}
};

// RAM+'s λ per model: 1 + r·clip(ρ, 0, alpha), ρ = its shared changes / its unique changes
// (unique clamped below at epsilon, as mergekit does).
std::vector<double> plus_scales(const std::vector<uint64_t>& shared, const std::vector<uint64_t>& unique, double r,
                                double alpha, double epsilon) {
	std::vector<double> scales(shared.size());
	for (size_t i = 0; i < shared.size(); ++i)
		scales[i] =
		    1 + r * std::clamp(static_cast<double>(shared[i]) / std::max(static_cast<double>(unique[i]), epsilon), 0.0,
		                       alpha);
	return scales;
}

// RAM: no statistics. RAM+: one pass counts each model's shared and unique changes per block
// (integers, so their sum is the same in any order).
class RamBlocks final : public BlockMerge {
public:
	RamBlocks(size_t base, std::vector<size_t> models, double epsilon, std::optional<std::pair<double, double>> plus,
	          uint64_t elements)
	    : base_(base), models_(std::move(models)), epsilon_(epsilon), plus_(plus), unique_scale_(models_.size(), 1.0),
	      shared_(plus ? block_count(elements) : 0), unique_(shared_.size()) {}

	int stat_passes() const override { return plus_ ? 1 : 0; }

	void observe(int, const Block& block, unsigned) override {
		shared_[block.index].assign(models_.size(), 0);
		unique_[block.index].assign(models_.size(), 0);
		elements(block).count_changes(shared_[block.index], unique_[block.index]);
	}

	void end_pass(int) override {
		std::vector<uint64_t> shared(models_.size()), unique(models_.size());
		for (size_t b = 0; b < shared_.size(); ++b)
			for (size_t i = 0; i < models_.size(); ++i)
				shared[i] += shared_[b][i], unique[i] += unique_[b][i];
		shared_ = {}, unique_ = {};
		unique_scale_ = plus_scales(shared, unique, plus_->first, plus_->second, epsilon_);
	}

	void merge(const Block& block, std::span<float> out, unsigned) override {
		elements(block).merge(unique_scale_, out);
	}

private:
	RamElements elements(const Block& block) const {
		RamElements e{block.sources[base_], {}, epsilon_};
		for (size_t i : models_)
			e.models.push_back(block.sources[i]);
		return e;
	}

	size_t base_;
	std::vector<size_t> models_;
	double epsilon_;
	std::optional<std::pair<double, double>> plus_; // RAM+'s r and alpha
	std::vector<double> unique_scale_;
	std::vector<std::vector<uint64_t>> shared_, unique_; // per block, per model
};

class RamMethod final : public MergeMethod, public WholeTensorReference {
public:
	RamMethod(std::string name, std::string description, bool plus) : plus_(plus) {
		info_ = {
		    .name = std::move(name),
		    .description = std::move(description),
		    .reference = "https://arxiv.org/abs/2601.13572",
		    .global_params = {{.name = "epsilon",
		                       .default_value = 1e-5,
		                       .help = "A change counts when its magnitude exceeds this",
		                       .min_value = 0}},
		    .model_params = {},
		    .base = BaseModel::Required,
		};
		if (plus_) {
			info_.global_params.push_back(
			    {.name = "r", .default_value = 0.1, .help = "Strength of the unique-change rescaling", .min_value = 0});
			info_.global_params.push_back(
			    {.name = "alpha", .default_value = 0.2, .help = "Cap on the shared/unique ratio", .min_value = 0});
		}
	}

	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned) const override {
		check_source_count(info_, input, source_count);
		std::vector<size_t> models = model_indices(input, source_count);
		std::optional<std::pair<double, double>> plus;
		if (plus_) plus = {global_param(info_, input, "r"), global_param(info_, input, "alpha")};
		return std::make_unique<RamBlocks>(static_cast<size_t>(input.base_index), std::move(models),
		                                   global_param(info_, input, "epsilon"), plus, elements);
	}

	// The whole-tensor form, kept as the reference of the streamed one.
	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const double epsilon = global_param(info_, input, "epsilon");
		RamElements elements{input.sources[static_cast<size_t>(input.base_index)], {}, epsilon};
		for (size_t i = 0; i < input.sources.size(); ++i)
			if (static_cast<int>(i) != input.base_index) elements.models.push_back(input.sources[i]);
		const size_t count = elements.models.size();
		std::vector<double> unique_scale(count, 1.0);
		if (plus_) {
			std::vector<uint64_t> shared(count), unique(count);
			elements.count_changes(shared, unique);
			unique_scale = plus_scales(shared, unique, global_param(info_, input, "r"),
			                           global_param(info_, input, "alpha"), epsilon);
		}
		elements.merge(unique_scale, out);
	}

private:
	bool plus_;
	MethodInfo info_;
};

} // namespace

const MergeMethod& ram_method() {
	static const RamMethod method("ram", "Per element: a change made by one model taken whole, shared ones averaged",
	                              false);
	return method;
}

const MergeMethod& ramplus_tl_method() {
	static const RamMethod method(
	    "ramplus_tl", "RAM with each model's unique changes scaled up by its share of overlapping ones", true);
	return method;
}

} // namespace weld
