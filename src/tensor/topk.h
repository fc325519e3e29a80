// Exact top-k by magnitude over a tensor streamed in blocks, without sorting or copying it:
// radix selection on the float bit patterns (|x| orders like its bits with the sign cleared).
// Pass 0 histograms the top 16 bits, pass 1 the low 15 bits within the bin holding the k-th
// largest, which gives the threshold T exactly; pass 2 (only when the elements equal to T cannot
// all be kept, and that bin held other values too) counts them per block, so the kept ones can be
// the first in index order, as in keep_top_k_by_magnitude. Every pass may see its blocks in any order on several
// workers.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace weld {

class TopKSelection {
public:
	static constexpr int kPasses = 3;

	// Keeps k of the n elements of a tensor seen as `blocks` blocks (k <= n < 2^32).
	TopKSelection(uint64_t n, uint64_t k, uint64_t blocks, unsigned workers);

	bool wants_pass(int pass) const;
	// values: block number `block` of the tensor; blocks are numbered in element order.
	void observe(int pass, uint64_t block, std::span<const float> values, unsigned worker);
	void end_pass(int pass);

	// After the wanted passes: zeroes the elements of this block that are not kept.
	void apply(uint64_t block, std::span<float> values) const;

private:
	uint64_t k_;
	bool keep_all_;
	std::vector<std::vector<uint32_t>> histograms_; // per worker
	uint32_t high_bin_ = 0;                         // pass 0 result: top 16 bits of T
	uint64_t above_high_bin_ = 0;                   // elements above that bin
	bool threshold_known_ = false;
	uint32_t threshold_ = 0;    // |x| bit pattern of the k-th largest
	uint64_t ties_to_keep_ = 0; // of the elements equal to the threshold
	bool keep_all_ties_ = false;
	bool ties_counted_ = false;            // pass 1 found the bin holds only the threshold
	std::vector<uint32_t> ties_per_block_; // pass 2 (or pass 1 when ties_counted_)
	uint64_t cutoff_block_ = 0;            // ties kept: all in earlier blocks, the first
	uint64_t ties_in_cutoff_block_ = 0;    // ties_in_cutoff_block_ in this one

	void find_cutoff();
};

} // namespace weld
