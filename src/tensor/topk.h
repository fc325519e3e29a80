// Exact top-k by magnitude over a tensor streamed in blocks, without sorting or copying it:
// radix selection on the float bit patterns (|x| orders like its bits with the sign cleared).
//   pass 0: histogram of the top 16 bits: the bin B holding the k-th largest;
//   pass 1: histogram of the low 15 bits within B: the threshold T exactly; and per block, the
//           elements in B. When B holds T alone (common for differences of bfloat16 numbers,
//           which have few significant bits) these are T's ties per block; else, while B holds
//           at most n/8 elements, their low bits are kept per block to count T's ties from;
//   pass 2: otherwise T's ties are counted per block.
// Elements above T are kept, and of those equal to T the first ones in index order, as in
// keep_top_k_by_magnitude. Every pass may see its blocks in any order on several workers.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <vector>

namespace weld {

class TopKSelection {
public:
	static constexpr int kPasses = 3;

	// Keeps k of the n elements of a tensor seen as `blocks` blocks of at most 2^14 elements
	// (k <= n < 2^32).
	TopKSelection(uint64_t n, uint64_t k, uint64_t blocks, unsigned workers);

	// Sets k (<= n) once pass 0 observed every block, before end_pass(0): pass 0 does not depend
	// on k, so a method that learns k in that pass (SCE counts its nonzero variances) shares it.
	// Only for a selection built with k < n.
	void set_k(uint64_t k);

	// Asked before each pass, once the passes before it ended.
	bool wants_pass(int pass) const;
	// values: block number `block` of the tensor; blocks are numbered in element order.
	void observe(int pass, uint64_t block, std::span<const float> values, unsigned worker);
	void end_pass(int pass);

	// After the wanted passes: zeroes the elements of this block that are not kept.
	void apply(uint64_t block, std::span<float> values) const;
	// After the wanted passes: kept[j] = 1 where values[j] (of this block) is kept, else 0.
	void mark(uint64_t block, std::span<const float> values, std::span<uint8_t> kept) const;

private:
	uint64_t n_, k_;
	bool keep_all_;
	std::vector<std::vector<uint32_t>> histograms_; // per worker
	uint32_t high_bin_ = 0;                         // pass 0: top 16 bits of T
	uint64_t above_high_bin_ = 0;                   // elements above that bin
	uint32_t threshold_ = 0;                        // |x| bit pattern of the k-th largest
	uint64_t ties_to_keep_ = 0;                     // of the elements equal to the threshold
	bool keep_all_ties_ = false;
	std::vector<uint32_t> ties_per_block_;        // pass 1 (elements in the bin) or pass 2
	bool ties_counted_ = false;                   // after pass 1: pass 2 is not needed
	std::vector<std::vector<uint16_t>> low_bits_; // pass 1: of the elements in the bin, per block
	std::atomic<uint64_t> kept_low_bits_{0};
	uint64_t keep_low_bits_limit_ = 0;
	std::atomic<bool> low_bits_incomplete_{false};
	uint64_t cutoff_block_ = 0;         // ties kept: all in earlier blocks, the first
	uint64_t ties_in_cutoff_block_ = 0; // ties_in_cutoff_block_ in this one

	void set_threshold(uint32_t threshold, uint64_t above, uint64_t equal);
	void find_cutoff();
};

} // namespace weld
