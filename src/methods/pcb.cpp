// PCB-Merging, Parameter Competition Balancing (Du et al., NeurIPS 2024): every task vector
// element gets a score from its weight within its own task (intra-balancing) and its agreement
// with the other tasks (inter-balancing); only the top `ratio` of each task's scores survive and
// the task vectors are averaged with the surviving scores as weights.
#include "methods/methods.h"
#include "methods/reference.h"
#include "tensor/fast_exp.h"
#include "tensor/rank_select.h"

#include <algorithm>
#include <cmath>
#include <memory>

namespace weld {
namespace {

// Min-max normalisation to [0, 1] over the whole tensor; a constant input maps to all zeros.
struct MinMax {
	double lo = INFINITY, hi = -INFINITY;
	void add(double v) { lo = std::min(lo, v), hi = std::max(hi, v); }
	double norm(double v) const { return hi > lo ? (v - lo) / (hi - lo) : 0.0; }
};

// One tensor's computation: the base, the task models and a scratch buffer.
class Balancer {
public:
	explicit Balancer(const MergeInput& input) : base_(input.sources[static_cast<size_t>(input.base_index)]) {
		for (size_t i = 0; i < input.sources.size(); ++i)
			if (static_cast<int>(i) != input.base_index) tasks_.push_back(input.sources[i]);
	}

	void merge(double ratio, double lambda, std::span<float> out) {
		const size_t n = tasks_.size(), d = out.size();
		// beta[i * d + j]: the balancing score of task i at element j (inter, then times intra).
		std::vector<float> beta(n * d, 0.0f);
		for (size_t i = 0; i < n; ++i)
			for (size_t k = i; k < n; ++k)
				add_inter(i, k, beta);
		for (size_t i = 0; i < n; ++i) {
			const std::span<float> row(beta.data() + i * d, d);
			multiply_intra(i, row);
			drop_low_scores(row, ratio);
		}
		for (size_t j = 0; j < d; ++j) {
			double weighted = 0, weights = 0;
			for (size_t i = 0; i < n; ++i) {
				weighted += beta[i * d + j] * tau(i, j);
				weights += beta[i * d + j];
			}
			const double merged = weights > 0 ? weighted / weights : 0.0;
			out[j] = static_cast<float>(base_[j] + lambda * merged);
		}
	}

private:
	double tau(size_t i, size_t j) const { return static_cast<double>(tasks_[i][j]) - base_[j]; }

	// softmax over the tensor's elements of scale * norm(value(j)), times the element count so
	// scores stay near 1 in float32 (a factor common to every task: it cancels in the average).
	template <typename F> void softmax_norm(size_t d, double scale, F value) {
		MinMax range;
		for (size_t j = 0; j < d; ++j)
			range.add(value(j));
		scratch_.resize(d);
		for (size_t j = 0; j < d; ++j) // vectorizes: no sum in this loop
			scratch_[j] = fast_exp(scale * (range.norm(value(j)) - 1.0));
		double sum = 0;
		for (size_t j = 0; j < d; ++j)
			sum += scratch_[j];
		for (double& v : scratch_)
			v *= static_cast<double>(d) / sum;
	}

	// inter_i = sum_k softmax(norm(tau_i * tau_k)); the term is symmetric, so add it to both.
	void add_inter(size_t i, size_t k, std::vector<float>& beta) {
		const size_t d = base_.size();
		softmax_norm(d, 1.0, [&](size_t j) { return tau(i, j) * tau(k, j); });
		for (size_t j = 0; j < d; ++j) {
			beta[i * d + j] += static_cast<float>(scratch_[j]);
			if (k != i) beta[k * d + j] += static_cast<float>(scratch_[j]);
		}
	}

	// intra_i = softmax(N * norm(tau_i^2)).
	void multiply_intra(size_t i, std::span<float> row) {
		softmax_norm(row.size(), static_cast<double>(tasks_.size()), [&](size_t j) { return tau(i, j) * tau(i, j); });
		for (size_t j = 0; j < row.size(); ++j)
			row[j] = static_cast<float>(row[j] * scratch_[j]);
	}

	// Keeps the scores at or above the one at sorted position floor((1 - ratio) * d), as the
	// reference's clamp at that quantile does; the rest are dropped (weight 0).
	static void drop_low_scores(std::span<float> row, double ratio) {
		if (row.empty() || ratio >= 1) return;
		std::vector<float> sorted(row.begin(), row.end());
		const auto pos =
		    std::min(static_cast<size_t>(std::floor((1 - ratio) * static_cast<double>(row.size()))), row.size() - 1);
		std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(pos), sorted.end());
		const float threshold = sorted[pos];
		for (float& v : row)
			if (v < threshold) v = 0.0f;
	}

	std::span<const float> base_;
	std::vector<std::span<const float>> tasks_;
	std::vector<double> scratch_;
};

// The streaming form. Every softmax over the tensor (inter: one per pair of tasks, in
// Balancer's order; intra: one per task) needs its value range (pass 0) and its sum of
// exponentials (pass 1, per block then in block order: the scores may differ from merge_whole's
// by rounding); passes 2 and 3 find each task's score threshold exactly. Each pass recomputes
// the block's scores from its task vectors.
class PcbBlocks final : public BlockMerge {
public:
	PcbBlocks(std::vector<size_t> tasks, size_t base, double ratio, double lambda, uint64_t elements, unsigned workers)
	    : tasks_(std::move(tasks)), base_(base), lambda_(lambda), d_(elements), select_(ratio < 1 && elements > 0),
	      scratch_(workers) {
		const size_t n = tasks_.size();
		for (size_t i = 0; i < n; ++i)
			for (size_t k = i; k < n; ++k)
				softmaxes_.push_back({.a = i, .b = k, .scale = 1.0, .intra = false, .range = {}, .factor = 0});
		for (size_t i = 0; i < n; ++i)
			softmaxes_.push_back(
			    {.a = i, .b = i, .scale = static_cast<double>(n), .intra = true, .range = {}, .factor = 0});
		for (Scratch& s : scratch_)
			s.beta.resize(n * kBlockElements), s.tau.resize(n * kBlockElements), s.exps.resize(kBlockElements);
		block_ranges_.resize(block_count(elements) * softmaxes_.size());
		block_sums_.resize(block_count(elements) * softmaxes_.size());
		if (!select_) return;
		const auto pos =
		    std::min(static_cast<uint64_t>(std::floor((1 - ratio) * static_cast<double>(elements))), elements - 1);
		for (size_t i = 0; i < n; ++i)
			selections_.push_back(std::make_unique<RankSelection>(elements, std::vector<uint64_t>{pos}, workers));
	}

	int stat_passes() const override { return 2 + RankSelection::kPasses; }
	bool wants_pass(int pass) const override { return pass < 2 || select_; }

	void observe(int pass, const Block& block, unsigned worker) override {
		if (pass >= 2) {
			const float* beta = scores(block, worker, false);
			for (size_t i = 0; i < tasks_.size(); ++i)
				selections_[i]->observe(pass - 2, {beta + i * kBlockElements, block.size()}, worker);
			return;
		}
		load_task_vectors(block, worker);
		for (size_t s = 0; s < softmaxes_.size(); ++s) {
			const Softmax& softmax = softmaxes_[s];
			const double* a = task_vector(worker, softmax.a);
			const double* b = task_vector(worker, softmax.b);
			const size_t at = block.index * softmaxes_.size() + s;
			if (pass == 0) {
				// Four running ranges in registers: min and max are exact, so the order is free.
				MinMax lanes[4];
				size_t j = 0;
				for (; j + 4 <= block.size(); j += 4)
					for (size_t l = 0; l < 4; ++l)
						lanes[l].add(a[j + l] * b[j + l]);
				for (; j < block.size(); ++j)
					lanes[0].add(a[j] * b[j]);
				for (const MinMax& lane : lanes)
					if (lane.lo <= lane.hi) block_ranges_[at].add(lane.lo), block_ranges_[at].add(lane.hi);
				continue;
			}
			double* e = scratch_[worker].exps.data();
			for (size_t j = 0; j < block.size(); ++j) // vectorizes: the sum follows in order
				e[j] = fast_exp(softmax.scale * (softmax.range.norm(a[j] * b[j]) - 1.0));
			double sum = 0;
			for (size_t j = 0; j < block.size(); ++j)
				sum += e[j];
			block_sums_[at] = sum;
		}
	}

	void end_pass(int pass) override {
		const size_t count = softmaxes_.size();
		for (size_t s = 0; s < count && pass < 2; ++s) {
			Softmax& softmax = softmaxes_[s];
			double sum = 0;
			for (uint64_t block = 0; block < block_count(d_); ++block) {
				const MinMax& range = block_ranges_[block * count + s];
				if (pass == 0) softmax.range.add(range.lo), softmax.range.add(range.hi);
				sum += block_sums_[block * count + s];
			}
			// Balancer's factor: the element count over the sum.
			if (pass == 1) softmax.factor = static_cast<double>(d_) / sum;
		}
		if (pass >= 2)
			for (auto& selection : selections_)
				selection->end_pass(pass - 2);
		if (pass == 3)
			for (auto& selection : selections_)
				thresholds_.push_back(selection->value(0));
	}

	void merge(const Block& block, std::span<float> out, unsigned worker) override {
		const float* beta = scores(block, worker, true);
		const std::span<const float> base = block.sources[base_];
		for (size_t j = 0; j < out.size(); ++j) {
			double weighted = 0, weights = 0;
			for (size_t i = 0; i < tasks_.size(); ++i) {
				const float score = beta[i * kBlockElements + j];
				weighted += score * task_vector(worker, i)[j];
				weights += score;
			}
			const double merged = weights > 0 ? weighted / weights : 0.0;
			out[j] = static_cast<float>(base[j] + lambda_ * merged);
		}
	}

private:
	struct Softmax {
		size_t a, b; // of scale * norm(tau_a * tau_b)
		double scale;
		bool intra;        // multiplies the scores, after every inter term was added
		MinMax range;      // after pass 0
		double factor = 0; // after pass 1
	};
	struct Scratch {
		std::vector<float> beta;  // per task, a block of scores
		std::vector<double> tau;  // per task, a block of its task vector
		std::vector<double> exps; // a block of one softmax's terms
	};
	std::vector<size_t> tasks_;
	size_t base_;
	double lambda_;
	uint64_t d_;
	bool select_;
	std::vector<Softmax> softmaxes_;
	std::vector<MinMax> block_ranges_;                       // per block, per softmax
	std::vector<double> block_sums_;                         // per block, per softmax
	std::vector<std::unique_ptr<RankSelection>> selections_; // per task
	std::vector<float> thresholds_;                          // per task
	std::vector<Scratch> scratch_;                           // per worker

	const double* task_vector(unsigned worker, size_t i) const {
		return scratch_[worker].tau.data() + i * kBlockElements;
	}

	void load_task_vectors(const Block& block, unsigned worker) {
		Scratch& s = scratch_[worker];
		const std::span<const float> base = block.sources[base_];
		for (size_t i = 0; i < tasks_.size(); ++i)
			for (size_t j = 0; j < block.size(); ++j)
				s.tau[i * kBlockElements + j] = static_cast<double>(block.sources[tasks_[i]][j]) - base[j];
	}

	// The block's balancing scores per task as Balancer computes them: the inter terms added in
	// the same order, times intra; dropped: zero below the task's threshold.
	const float* scores(const Block& block, unsigned worker, bool dropped) {
		load_task_vectors(block, worker);
		float* beta = scratch_[worker].beta.data();
		const size_t n = tasks_.size(), size = block.size();
		for (size_t i = 0; i < n; ++i)
			std::fill_n(beta + i * kBlockElements, size, 0.0f);
		for (const Softmax& s : softmaxes_) {
			const double *a = task_vector(worker, s.a), *b = task_vector(worker, s.b);
			float *row_a = beta + s.a * kBlockElements, *row_b = beta + s.b * kBlockElements;
			double* e = scratch_[worker].exps.data();
			for (size_t j = 0; j < size; ++j) // branch-free, so it vectorizes
				e[j] = fast_exp(s.scale * (s.range.norm(a[j] * b[j]) - 1.0)) * s.factor;
			if (s.intra) {
				for (size_t j = 0; j < size; ++j)
					row_a[j] = static_cast<float>(row_a[j] * e[j]);
				continue;
			}
			for (size_t j = 0; j < size; ++j)
				row_a[j] += static_cast<float>(e[j]);
			if (s.b != s.a)
				for (size_t j = 0; j < size; ++j)
					row_b[j] += static_cast<float>(e[j]);
		}
		if (dropped && select_)
			for (size_t i = 0; i < n; ++i)
				for (size_t j = 0; j < size; ++j)
					if (beta[i * kBlockElements + j] < thresholds_[i]) beta[i * kBlockElements + j] = 0.0f;
		return beta;
	}
};

class PcbMethod final : public MergeMethod, public WholeTensorReference {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned workers) const override {
		check_source_count(info_, input, source_count);
		std::vector<size_t> tasks = model_indices(input, source_count);
		return std::make_unique<PcbBlocks>(std::move(tasks), static_cast<size_t>(input.base_index),
		                                   global_param(info_, input, "ratio"), global_param(info_, input, "lambda"),
		                                   elements, std::max(1u, workers));
	}

	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		Balancer(input).merge(global_param(info_, input, "ratio"), global_param(info_, input, "lambda"), out);
	}

private:
	MethodInfo info_{
	    .name = "pcb",
	    .description = "Parameter Competition Balancing: intra/inter-task scores weight the task vectors",
	    .reference = "https://arxiv.org/abs/2410.02396",
	    .global_params = {{.name = "ratio",
	                       .default_value = 0.1,
	                       .help = "Fraction of each task's balancing scores kept (the rest are dropped)",
	                       .min_value = 0,
	                       .max_value = 1,
	                       .min_exclusive = true},
	                      {.name = "lambda", .default_value = 1.0, .help = "Scale of the merged task vector"}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .min_sources = 2,
	};
};

} // namespace

const MergeMethod& pcb_method() {
	static const PcbMethod method;
	return method;
}

} // namespace weld
