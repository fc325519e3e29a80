// SCE (Select, Calculate, Erase; FuseChat 2, https://arxiv.org/abs/2408.07990) as mergekit's
// sce.py: keep the select_topk fraction of positions where the task vectors vary most, weight
// each task vector by its mean squared (masked) delta, elect signs TIES-style on the unweighted
// sum, and average the agreeing deltas by those weights.
#include "methods/methods.h"
#include "methods/reference.h"
#include "tensor/kernels.h"
#include "tensor/topk.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>

namespace weld {
namespace {

// Population variance across the task vectors at each element (tvs: one pointer per task
// vector), as SceMethod::select computes it.
void variances(const std::vector<const float*>& tvs, size_t count, float* variance) {
	for (size_t j = 0; j < count; ++j) {
		double mean = 0, square = 0;
		for (const float* tv : tvs)
			mean += tv[j];
		mean /= static_cast<double>(tvs.size());
		for (const float* tv : tvs)
			square += (tv[j] - mean) * (tv[j] - mean);
		variance[j] = static_cast<float>(square / static_cast<double>(tvs.size()));
	}
}

// The merged value at each element from the masked task vectors and their weights.
void sce_mix(const std::vector<const float*>& tvs, const std::vector<double>& weights, std::span<const float> base,
             std::span<float> out) {
	for (size_t j = 0; j < out.size(); ++j) {
		double sum = 0;
		for (const float* tv : tvs)
			sum += tv[j];
		// Majority sign of the unweighted sum (zero counts as +); zeros match neither sign.
		const bool positive = sum >= 0;
		double merged = 0, divisor = 0;
		for (size_t t = 0; t < tvs.size(); ++t) {
			const float d = tvs[t][j];
			if (!(positive ? d > 0 : d < 0)) continue;
			merged += weights[t] * d;
			divisor += weights[t];
		}
		out[j] = static_cast<float>(base[j] + merged / std::max(divisor, 1e-6));
	}
}

// The streaming form. Statistics passes: 0, the positions of nonzero variance (select_topk <
// 1); 1 to 3, the exact top-k selection of the variances; 4, each task vector's sum of squares
// (masked) per block, summed in block order. The output pass recomputes the block's task
// vectors, masks and mixes them.
class SceBlocks final : public BlockMerge {
public:
	SceBlocks(std::vector<size_t> models, size_t base, double topk, uint64_t elements, unsigned workers)
	    : models_(std::move(models)), base_(base), topk_(topk), select_(topk < 1 && !models_.empty()), n_(elements),
	      squares_(models_.size(), std::vector<double>(block_count(elements))),
	      scratch_(workers, std::vector<float>((models_.size() + 1) * kBlockElements)) {
		// k is known after pass 0 (a share of the nonzero variances), which the selection shares.
		if (select_) top_k_ = std::make_unique<TopKSelection>(n_, 0, block_count(n_), workers);
	}

	// The selection's passes (the first also counts the nonzero variances), then the squares.
	int stat_passes() const override { return TopKSelection::kPasses + 1; }

	bool wants_pass(int pass) const override {
		if (pass == 0) return select_;
		if (pass < TopKSelection::kPasses) return select_ && !keep_none_ && top_k_->wants_pass(pass);
		return !models_.empty();
	}

	void observe(int pass, const Block& block, unsigned worker) override {
		const auto tvs = masked_task_vectors(block, worker, pass == TopKSelection::kPasses);
		const float* variance = scratch_[worker].data() + models_.size() * kBlockElements;
		if (pass < TopKSelection::kPasses) {
			if (pass == 0) {
				uint64_t count = 0;
				for (size_t j = 0; j < block.size(); ++j)
					count += variance[j] != 0;
				nonzero_ += count;
			}
			if (top_k_->wants_pass(pass)) top_k_->observe(pass, block.index, {variance, block.size()}, worker);
			return;
		}
		for (size_t t = 0; t < tvs.size(); ++t) {
			double square = 0;
			for (size_t j = 0; j < block.size(); ++j)
				square += static_cast<double>(tvs[t][j]) * tvs[t][j];
			squares_[t][block.index] = square;
		}
	}

	void end_pass(int pass) override {
		if (pass == 0) {
			const auto k = static_cast<uint64_t>(std::floor(topk_ * static_cast<double>(nonzero_.load())));
			keep_none_ = k == 0;
			if (!keep_none_) top_k_->set_k(k);
			top_k_->end_pass(0);
		} else if (pass < TopKSelection::kPasses) {
			top_k_->end_pass(pass);
		} else {
			// Each task vector's mean square, normalized to sum 1; equal weights when that sum is < 1e-6.
			double total = 0;
			weights_.assign(models_.size(), 0);
			for (size_t t = 0; t < models_.size(); ++t) {
				double square = 0;
				for (double s : squares_[t])
					square += s;
				weights_[t] = n_ == 0 ? 0 : square / static_cast<double>(n_);
				total += weights_[t];
			}
			for (double& w : weights_)
				w = std::fabs(total) < 1e-6 ? 1.0 / static_cast<double>(weights_.size()) : w / total;
		}
	}

	void merge(const Block& block, std::span<float> out, unsigned worker) override {
		sce_mix(masked_task_vectors(block, worker, true), weights_, block.sources[base_], out);
	}

private:
	std::vector<size_t> models_;
	size_t base_;
	double topk_;
	bool select_;
	uint64_t n_;
	std::atomic<uint64_t> nonzero_{0};
	bool keep_none_ = false;
	std::unique_ptr<TopKSelection> top_k_;
	std::vector<std::vector<double>> squares_; // per task vector, per block
	std::vector<double> weights_;
	std::vector<std::vector<float>> scratch_; // per worker: a block of each task vector, variances

	// The block's task vectors and (when selecting) variances in the worker's scratch; masked:
	// zeroed outside the selected positions (once the selection is known).
	std::vector<const float*> masked_task_vectors(const Block& block, unsigned worker, bool masked) {
		float* scratch = scratch_[worker].data();
		const size_t size = block.size();
		const std::span<const float> base = block.sources[base_];
		std::vector<const float*> tvs;
		for (size_t t = 0; t < models_.size(); ++t) {
			float* tv = scratch + t * kBlockElements;
			const std::span<const float> x = block.sources[models_[t]];
			for (size_t j = 0; j < size; ++j)
				tv[j] = x[j] - base[j];
			tvs.push_back(tv);
		}
		if (!select_) return tvs;
		float* variance = scratch + models_.size() * kBlockElements;
		variances(tvs, size, variance);
		if (!masked) return tvs;
		if (keep_none_)
			std::fill_n(variance, size, 0.0f);
		else
			top_k_->apply(block.index, {variance, size});
		for (size_t t = 0; t < models_.size(); ++t)
			for (size_t j = 0; j < size; ++j)
				if (variance[j] == 0) scratch[t * kBlockElements + j] = 0.0f;
		return tvs;
	}
};

class SceMethod final : public MergeMethod, public WholeTensorReference {
public:
	SceMethod() {
		info_ = {
		    .name = "sce",
		    .description = "SCE: top-variance positions, mean-square task weights, sign election",
		    .reference = "https://arxiv.org/abs/2408.07990",
		    .global_params = {{.name = "int8_mask",
		                       .type = ParamType::Bool,
		                       .default_value = 0,
		                       .help = "Accepted for mergekit compatibility; no effect in float32"},
		                      {.name = "select_topk",
		                       .default_value = 1.0,
		                       .help = "Fraction of positions (by variance across task vectors) to keep",
		                       .min_value = 0,
		                       .max_value = 1,
		                       .min_exclusive = true}},
		    .model_params = {},
		    .base = BaseModel::Required,
		};
	}

	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned workers) const override {
		check_source_count(info_, input, source_count);
		std::vector<size_t> models = model_indices(input, source_count);
		return std::make_unique<SceBlocks>(std::move(models), static_cast<size_t>(input.base_index),
		                                   global_param(info_, input, "select_topk"), elements, std::max(1u, workers));
	}

	// The whole-tensor form, kept as the reference of the streamed one: the same but for the sums
	// of squares, over the whole tensor here, per block in block order there.
	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const auto base_index = static_cast<size_t>(input.base_index);
		const std::span<const float> base = input.sources[base_index];
		std::vector<std::vector<float>> tvs;
		for (size_t i = 0; i < input.sources.size(); ++i) {
			if (i == base_index) continue;
			auto& tv = tvs.emplace_back(out.size());
			for (size_t j = 0; j < out.size(); ++j)
				tv[j] = input.sources[i][j] - base[j];
		}
		if (const double topk = global_param(info_, input, "select_topk"); topk < 1) select(tvs, topk);
		const std::vector<double> weights = task_weights(tvs);
		for (size_t j = 0; j < out.size(); ++j) {
			double sum = 0;
			for (const auto& tv : tvs)
				sum += tv[j];
			// Majority sign of the unweighted sum (zero counts as +); zeros match neither sign.
			const bool positive = sum >= 0;
			double merged = 0, divisor = 0;
			for (size_t t = 0; t < tvs.size(); ++t) {
				const float d = tvs[t][j];
				if (!(positive ? d > 0 : d < 0)) continue;
				merged += weights[t] * d;
				divisor += weights[t];
			}
			out[j] = static_cast<float>(base[j] + merged / std::max(divisor, 1e-6));
		}
	}

private:
	MethodInfo info_;

	// Zeroes every task vector outside the int(select_topk * #nonzero-variance) positions of
	// largest variance across task vectors (population variance; ties: lower index first).
	static void select(std::vector<std::vector<float>>& tvs, double topk) {
		if (tvs.empty()) return;
		const size_t n = tvs[0].size();
		std::vector<float> variance(n);
		size_t nonzero = 0;
		for (size_t j = 0; j < n; ++j) {
			double mean = 0, square = 0;
			for (const auto& tv : tvs)
				mean += tv[j];
			mean /= static_cast<double>(tvs.size());
			for (const auto& tv : tvs)
				square += (tv[j] - mean) * (tv[j] - mean);
			variance[j] = static_cast<float>(square / static_cast<double>(tvs.size()));
			nonzero += variance[j] != 0;
		}
		keep_top_k_by_magnitude(variance, static_cast<size_t>(std::floor(topk * static_cast<double>(nonzero))));
		for (auto& tv : tvs)
			for (size_t j = 0; j < n; ++j)
				if (variance[j] == 0) tv[j] = 0.0f;
	}

	// Each task vector's mean square, normalized to sum 1; equal weights when that sum is < 1e-6.
	static std::vector<double> task_weights(const std::vector<std::vector<float>>& tvs) {
		std::vector<double> weights(tvs.size());
		double total = 0;
		for (size_t t = 0; t < tvs.size(); ++t) {
			double square = 0;
			for (float d : tvs[t])
				square += static_cast<double>(d) * d;
			weights[t] = tvs[t].empty() ? 0 : square / static_cast<double>(tvs[t].size());
			total += weights[t];
		}
		for (double& w : weights)
			w = std::fabs(total) < 1e-6 ? 1.0 / static_cast<double>(weights.size()) : w / total;
		return weights;
	}
};

} // namespace

const MergeMethod& sce_method() {
	static const SceMethod method;
	return method;
}

} // namespace weld
