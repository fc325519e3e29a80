// Exact values at given ranks (ascending order) of a tensor streamed in blocks, without sorting
// or copying it: radix selection on keys of the float bits that order like the floats.
//   pass 0: histogram of the keys' top 16 bits: the bin holding each rank;
//   pass 1: histograms of the low 16 bits within those bins: each value exactly.
// The value at rank r is what std::nth_element puts at index r (-0 and +0 count as equal and
// come out as +0). Every pass may see its blocks in any order on several workers.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace weld {

class RankSelection {
public:
	static constexpr int kPasses = 2;

	// Selects the given ranks (each < n) of n < 2^32 values.
	RankSelection(uint64_t n, std::vector<uint64_t> ranks, unsigned workers);

	void observe(int pass, std::span<const float> values, unsigned worker);
	void end_pass(int pass);

	// After both passes: the value at ranks[i].
	float value(size_t i) const { return values_[i]; }

private:
	std::vector<uint64_t> ranks_;
	std::vector<uint32_t> bins_;              // pass 0: the distinct top-16-bit bins of the ranks
	std::vector<size_t> bin_of_rank_;         // index into bins_
	std::vector<uint64_t> below_bin_;         // per rank: values in lower bins
	std::vector<std::vector<uint32_t>> hist_; // per worker: one histogram per bin (pass 1) or the top bits
	std::vector<float> values_;
};

} // namespace weld
