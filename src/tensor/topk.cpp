#include "tensor/topk.h"

#include "util/error.h"

#include <algorithm>
#include <bit>
#include <fmt/format.h>

namespace weld {
namespace {

constexpr uint32_t kLowBits = 15;
constexpr uint32_t kHighBins = 1u << 16, kLowBins = 1u << kLowBits, kLowMask = kLowBins - 1;

inline uint32_t magnitude_key(float x) {
	return std::bit_cast<uint32_t>(x) & 0x7FFFFFFFu;
}

// Sums the workers' histograms and clears them for the next pass.
std::vector<uint64_t> take_total(std::vector<std::vector<uint32_t>>& histograms, size_t bins) {
	std::vector<uint64_t> total(bins, 0);
	for (auto& h : histograms) {
		for (size_t b = 0; b < h.size(); ++b)
			total[b] += h[b];
		h.clear();
	}
	return total;
}

} // namespace

TopKSelection::TopKSelection(uint64_t n, uint64_t k, uint64_t blocks, unsigned workers)
    : k_(k), keep_all_(k >= n), histograms_(workers), ties_per_block_(keep_all_ ? 0 : blocks, 0) {
	if (n >= (1ull << 32)) throw Error(fmt::format("magnitude selection over {} elements: at most 2^32 - 1", n));
}

bool TopKSelection::wants_pass(int pass) const {
	return !keep_all_ && (pass < 2 || !(keep_all_ties_ || ties_counted_));
}

void TopKSelection::observe(int pass, uint64_t block, std::span<const float> values, unsigned worker) {
	std::vector<uint32_t>& histogram = histograms_[worker];
	if (pass == 0) {
		histogram.resize(kHighBins, 0);
		for (float x : values)
			histogram[magnitude_key(x) >> kLowBits]++;
	} else if (pass == 1) {
		histogram.resize(kLowBins, 0);
		uint32_t in_bin = 0;
		for (float x : values) {
			const uint32_t key = magnitude_key(x);
			if ((key >> kLowBits) != high_bin_) continue;
			histogram[key & kLowMask]++;
			in_bin++;
		}
		ties_per_block_[block] = in_bin; // the ties, when the bin turns out to hold one value
	} else {
		uint32_t ties = 0;
		for (float x : values)
			ties += magnitude_key(x) == threshold_ ? 1 : 0;
		ties_per_block_[block] = ties;
	}
}

void TopKSelection::end_pass(int pass) {
	if (pass == 0) {
		const auto total = take_total(histograms_, kHighBins);
		uint64_t above = 0;
		for (uint32_t bin = kHighBins; bin-- > 0;) {
			if (above + total[bin] >= k_) {
				high_bin_ = bin;
				break;
			}
			above += total[bin];
		}
		above_high_bin_ = above;
	} else if (pass == 1) {
		const auto total = take_total(histograms_, kLowBins);
		// Differences of bfloat16 numbers have few significant bits, so the bin often holds a
		// single value: then pass 1's per-block counts are the tie counts and pass 2 is not needed.
		ties_counted_ = std::count_if(total.begin(), total.end(), [](uint64_t c) { return c > 0; }) == 1;
		uint64_t above = above_high_bin_;
		for (uint32_t low = kLowBins; low-- > 0;) {
			if (above + total[low] >= k_) {
				threshold_ = (high_bin_ << kLowBits) | low;
				ties_to_keep_ = k_ - above;
				keep_all_ties_ = ties_to_keep_ == total[low];
				break;
			}
			above += total[low];
		}
		histograms_.clear();
		histograms_.shrink_to_fit();
		if (ties_counted_ && !keep_all_ties_) find_cutoff();
	} else {
		find_cutoff();
	}
}

void TopKSelection::find_cutoff() {
	uint64_t before = 0;
	for (uint64_t b = 0; b < ties_per_block_.size(); ++b) {
		if (before + ties_per_block_[b] >= ties_to_keep_) {
			cutoff_block_ = b;
			ties_in_cutoff_block_ = ties_to_keep_ - before;
			return;
		}
		before += ties_per_block_[b];
	}
}

void TopKSelection::apply(uint64_t block, std::span<float> values) const {
	if (keep_all_) return;
	const uint32_t threshold = threshold_;
	if (keep_all_ties_ || block != cutoff_block_) {
		// Branch-free so it vectorizes: keep key > T, and key == T when this block's ties count.
		const bool ties_kept = keep_all_ties_ || block < cutoff_block_;
		for (float& x : values) {
			const uint32_t key = magnitude_key(x);
			const bool keep = key > threshold || (ties_kept && key == threshold);
			x = std::bit_cast<float>(std::bit_cast<uint32_t>(x) & (0u - static_cast<uint32_t>(keep)));
		}
		return;
	}
	uint64_t ties_left = ties_in_cutoff_block_;
	for (float& x : values) {
		const uint32_t key = magnitude_key(x);
		if (key > threshold) continue;
		if (key == threshold && ties_left > 0) {
			ties_left--;
			continue;
		}
		x = 0.0f;
	}
}

} // namespace weld
