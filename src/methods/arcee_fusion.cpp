// Arcee Fusion, as mergekit computes it: each element of the other model's change from the base
// scores |Δ| times the KL divergence between the softmaxes of its row in the model and in the
// base; only changes scoring at least median + 1.5·IQR of all scores are kept.
#include "methods/methods.h"
#include "methods/reference.h"
#include "tensor/fast_exp.h"
#include "tensor/rank_select.h"
#include "tensor/row_reduce.h"
#include "tensor/spherical.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fmt/format.h>
#include <memory>

namespace weld {
namespace {

// softmax(x) over one row, each probability plus 1e-8 as in mergekit.
std::vector<double> softmax(std::span<const float> x) {
	const double peak = x.empty() ? 0.0 : *std::max_element(x.begin(), x.end());
	std::vector<double> p(x.size());
	for (size_t k = 0; k < x.size(); ++k) // vectorizes: the sum follows in order
		p[k] = fast_exp(x[k] - peak);
	double sum = 0;
	for (double v : p)
		sum += v;
	for (double& v : p)
		v = v / sum + 1e-8;
	return p;
}

// The value at index floor(q·(n−1)) of the sorted values (mergekit's approximate quantile).
float quantile(std::vector<float>& values, double q) {
	const auto index = static_cast<size_t>(std::floor(q * static_cast<double>(values.size() - 1)));
	std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(index), values.end());
	return values[index];
}

// mergekit's quantile ranks: floor(q·(n−1)) for the median, the first and the third quartile.
std::vector<uint64_t> quartile_ranks(uint64_t n) {
	std::vector<uint64_t> ranks;
	for (double q : {0.5, 0.25, 0.75})
		ranks.push_back(static_cast<uint64_t>(std::floor(q * static_cast<double>(n - 1))));
	return ranks;
}

// The streaming form. Statistics passes: 0, each row's maximum in the model and the base; 1,
// their sums of exp(x − max); 2, each row's KL divergence; 3 and 4, the exact quartiles of the
// scores. Rows may cross blocks: their sums are added per piece, then the pieces in order, so
// the KL (hence the scores) may differ from merge_whole's by rounding.
class ArceeFusionBlocks final : public BlockMerge {
public:
	ArceeFusionBlocks(size_t base, uint64_t elements, uint64_t row_length, unsigned workers)
	    : base_(base), peaks_(elements, row_length, 2, RowReduction::Op::Max),
	      sums_(elements, row_length, 2, RowReduction::Op::Sum), kl_(elements, row_length, 1, RowReduction::Op::Sum),
	      quartiles_(elements, quartile_ranks(elements), workers), row_(row_length), n_(elements),
	      scores_(workers, std::vector<float>(kBlockElements)),
	      exps_(workers, std::vector<double>(2 * kBlockElements)) {}

	int stat_passes() const override { return 3 + RankSelection::kPasses; }

	void observe(int pass, const Block& block, unsigned worker) override {
		const std::span<const float> base = block.sources[base_], model = block.sources[1 - base_];
		const auto local = [&](uint64_t first) { return first - block.offset; };
		if (pass == 0)
			peaks_.observe(block.offset, block.size(), [&](uint64_t first, uint64_t count, std::span<double> out) {
				out[0] = *std::max_element(&model[local(first)], &model[local(first)] + count);
				out[1] = *std::max_element(&base[local(first)], &base[local(first)] + count);
			});
		else if (pass == 1)
			sums_.observe(block.offset, block.size(), [&](uint64_t first, uint64_t count, std::span<double> out) {
				const auto peak = peaks_.row(first / row_);
				double* e = exps_[worker].data();
				const size_t start = local(first);
				for (size_t k = 0; k < count; ++k) // vectorizes: the sums follow in order
					e[k] = fast_exp(model[start + k] - peak[0]),
					e[kBlockElements + k] = fast_exp(base[start + k] - peak[1]);
				out[0] = out[1] = 0;
				for (size_t k = 0; k < count; ++k)
					out[0] += e[k], out[1] += e[kBlockElements + k];
			});
		else if (pass == 2)
			kl_.observe(block.offset, block.size(), [&](uint64_t first, uint64_t count, std::span<double> out) {
				out[0] = row_kl(model.subspan(local(first), count), base.subspan(local(first), count), first / row_,
				                exps_[worker].data());
			});
		else
			quartiles_.observe(pass - 3, block_scores(block, worker), worker);
	}

	void end_pass(int pass) override {
		if (pass == 0) peaks_.end_pass();
		if (pass == 1) sums_.end_pass();
		if (pass == 2) kl_.end_pass();
		if (pass >= 3) quartiles_.end_pass(pass - 3);
		if (pass == 4) threshold_ = quartiles_.value(0) + 1.5f * (quartiles_.value(2) - quartiles_.value(1));
	}

	void merge(const Block& block, std::span<float> out, unsigned worker) override {
		const std::span<const float> base = block.sources[base_], model = block.sources[1 - base_];
		const std::span<const float> importance = block_scores(block, worker);
		uint64_t kept = 0;
		for (size_t j = 0; j < out.size(); ++j) {
			const bool keep = importance[j] >= threshold_;
			kept += keep;
			out[j] = keep ? base[j] + (model[j] - base[j]) : base[j];
		}
		kept_ += kept;
	}

	std::vector<std::string> notes() const override {
		return {fmt::format("arcee_fusion: threshold {:.6g}, kept {} of {} changes", threshold_, kept_.load(), n_)};
	}

private:
	size_t base_;
	RowReduction peaks_, sums_, kl_;
	RankSelection quartiles_;
	uint64_t row_, n_;
	float threshold_ = 0;
	std::atomic<uint64_t> kept_{0};
	std::vector<std::vector<float>> scores_; // per worker: a block of scores
	std::vector<std::vector<double>> exps_;  // per worker: two blocks of softmax terms

	// Row `row`'s part of KL(p ‖ q) over these elements, the softmaxes as merge_whole's.
	// p and q go through `scratch` (2 blocks) so their exps vectorize; the log loop cannot.
	double row_kl(std::span<const float> model, std::span<const float> base, uint64_t row, double* scratch) const {
		const auto peak = peaks_.row(row), sum = sums_.row(row);
		double *p = scratch, *q = scratch + kBlockElements;
		for (size_t k = 0; k < model.size(); ++k) {
			p[k] = fast_exp(model[k] - peak[0]) / sum[0] + 1e-8;
			q[k] = fast_exp(base[k] - peak[1]) / sum[1] + 1e-8;
		}
		double kl = 0;
		for (size_t k = 0; k < model.size(); ++k)
			kl += p[k] * std::log(p[k] / q[k]);
		return kl;
	}

	std::span<const float> block_scores(const Block& block, unsigned worker) {
		const std::span<const float> base = block.sources[base_], model = block.sources[1 - base_];
		float* scores = scores_[worker].data();
		for (size_t j = 0; j < block.size();) { // row by row: one KL, no division per element
			const uint64_t row = (block.offset + j) / row_;
			const size_t end = std::min<uint64_t>(block.size(), (row + 1) * row_ - block.offset);
			const double kl = kl_.row(row)[0];
			for (; j < end; ++j)
				scores[j] = static_cast<float>(std::fabs(model[j] - base[j]) * kl);
		}
		return {scores, block.size()};
	}
};

class ArceeFusionMethod final : public MergeMethod, public WholeTensorReference {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		if (out.empty()) return;
		auto blocks = block_merge(input, input.sources.size(), out.size(), 1);
		merge_in_blocks(*blocks, input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned workers) const override {
		check_source_count(info_, input, source_count);
		const VectorLayout rows = VectorLayout::rows(input.tensor_name, input.shape, elements);
		// An empty tensor has nothing to select: merge_whole writes nothing.
		if (elements == 0) return nullptr;
		return std::make_unique<ArceeFusionBlocks>(static_cast<size_t>(input.base_index), elements, rows.length,
		                                           std::max(1u, workers));
	}

	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		if (out.empty()) return;
		const auto base_index = static_cast<size_t>(input.base_index);
		const std::span<const float> base = input.sources[base_index];
		const std::span<const float> model = input.sources[1 - base_index];
		const std::vector<float> importance = scores(input, base, model);
		std::vector<float> sorted = importance;
		const float median = quantile(sorted, 0.5);
		const float q1 = quantile(sorted, 0.25), q3 = quantile(sorted, 0.75);
		const float threshold = median + 1.5f * (q3 - q1);
		size_t kept = 0;
		for (size_t j = 0; j < out.size(); ++j) {
			const bool keep = importance[j] >= threshold;
			kept += keep;
			out[j] = keep ? base[j] + (model[j] - base[j]) : base[j];
		}
		if (input.notes)
			input.notes->push_back(
			    fmt::format("arcee_fusion: threshold {:.6g}, kept {} of {} changes", threshold, kept, out.size()));
	}

private:
	// |Δ| times the KL divergence of the element's row (last dimension; a 1-D tensor is one row).
	static std::vector<float> scores(const MergeInput& input, std::span<const float> base,
	                                 std::span<const float> model) {
		const VectorLayout rows = VectorLayout::rows(input.tensor_name, input.shape, base.size());
		std::vector<float> importance(base.size());
		for (size_t r = 0; r < rows.count; ++r) {
			const size_t first = r * rows.vector_stride;
			const std::vector<double> p = softmax(model.subspan(first, rows.length));
			const std::vector<double> q = softmax(base.subspan(first, rows.length));
			double kl = 0;
			for (size_t k = 0; k < p.size(); ++k)
				kl += p[k] * std::log(p[k] / q[k]);
			for (size_t j = first; j < first + rows.length; ++j)
				importance[j] = static_cast<float>(std::fabs(model[j] - base[j]) * kl);
		}
		return importance;
	}

	MethodInfo info_{
	    .name = "arcee_fusion",
	    .description = "Keeps the other model's changes whose |Δ|·KL importance is an outlier (above median + 1.5 IQR)",
	    .reference = "https://arcee.ai",
	    .global_params = {},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .min_sources = 2,
	    .max_sources = 2,
	};
};

} // namespace

const MergeMethod& arcee_fusion_method() {
	static const ArceeFusionMethod method;
	return method;
}

} // namespace weld
