#include "tensor/topk.h"

#include "util/error.h"

#include <algorithm>
#include <bit>
#include <fmt/format.h>
#include <numeric>

namespace weld {
namespace {

constexpr uint32_t kLowBits = 15;
constexpr uint32_t kHighBins = 1u << 16, kLowBins = 1u << kLowBits, kLowMask = kLowBins - 1;
// Histograms are kept as kWays interleaved copies: runs of equal values (common) would otherwise
// chain every increment on the one before through memory.
constexpr uint32_t kWays = 4;
constexpr size_t kMaxBlock = 1u << 14; // elements per block, at most (kBlockElements)

inline uint32_t magnitude_key(float x) {
	return std::bit_cast<uint32_t>(x) & 0x7FFFFFFFu;
}

// Sums the workers' interleaved histograms and clears them for the next pass.
std::vector<uint64_t> take_total(std::vector<std::vector<uint32_t>>& histograms, size_t bins) {
	std::vector<uint64_t> total(bins, 0);
	for (auto& h : histograms) {
		for (size_t b = 0; b < h.size(); ++b)
			total[b % bins] += h[b];
		h.clear();
	}
	return total;
}

// Counts values[j] into histogram way j % kWays at key(values[j]).
template <class T, class Key>
void count_interleaved(std::span<const T> values, uint32_t* histogram, size_t bins, Key key) {
	size_t j = 0;
	for (; j + kWays <= values.size(); j += kWays)
		for (uint32_t w = 0; w < kWays; ++w)
			histogram[w * bins + key(values[j + w])]++;
	for (; j < values.size(); ++j)
		histogram[key(values[j])]++;
}

} // namespace

TopKSelection::TopKSelection(uint64_t n, uint64_t k, uint64_t blocks, unsigned workers)
    : n_(n), k_(k), keep_all_(k >= n), histograms_(workers) {
	if (n >= (1ull << 32)) throw Error(fmt::format("magnitude selection over {} elements: at most 2^32 - 1", n));
	if (!keep_all_) {
		ties_per_block_.resize(blocks, 0);
		low_bits_.resize(blocks);
		keep_low_bits_limit_ = n / 8;
	}
}

void TopKSelection::set_k(uint64_t k) {
	if (keep_all_ || k > n_) throw Error(fmt::format("magnitude selection: k = {} set late for {} elements", k, n_));
	k_ = k;
	keep_all_ = k == n_;
}

bool TopKSelection::wants_pass(int pass) const {
	if (keep_all_) return false;
	return pass <= 1 || !(keep_all_ties_ || ties_counted_);
}

void TopKSelection::observe(int pass, uint64_t block, std::span<const float> values, unsigned worker) {
	std::vector<uint32_t>& histogram = histograms_[worker];
	if (pass == 0) {
		histogram.resize(kWays * kHighBins, 0);
		count_interleaved(values, histogram.data(), kHighBins, [](float x) { return magnitude_key(x) >> kLowBits; });
	} else if (pass == 1) {
		// Gather the low bits of the elements in the bin (a store per element, no branch), then
		// histogram just those.
		uint16_t low[kMaxBlock];
		const size_t size = values.size();
		if (size > kMaxBlock) throw Error(fmt::format("magnitude selection: block of {} elements", size));
		const uint32_t bin = high_bin_;
		size_t in_bin = 0;
		for (size_t j = 0; j < size; ++j) {
			const uint32_t key = magnitude_key(values[j]);
			low[in_bin] = static_cast<uint16_t>(key & kLowMask);
			in_bin += (key >> kLowBits) == bin ? 1 : 0;
		}
		histogram.resize(kWays * kLowBins, 0);
		count_interleaved(std::span<const uint16_t>(low, in_bin), histogram.data(), kLowBins,
		                  [](uint16_t l) { return l; });
		ties_per_block_[block] = static_cast<uint32_t>(in_bin);
		// Keep them while they are few, so the ties of T can be counted without pass 2.
		if (kept_low_bits_.fetch_add(in_bin) + in_bin <= keep_low_bits_limit_)
			low_bits_[block].assign(low, low + in_bin);
		else
			low_bits_incomplete_ = true;
	} else {
		uint32_t ties = 0;
		for (float x : values)
			ties += magnitude_key(x) == threshold_ ? 1 : 0;
		ties_per_block_[block] = ties;
	}
}

void TopKSelection::end_pass(int pass) {
	if (keep_all_) { // set_k kept every element after pass 0
		histograms_ = {};
		return;
	}
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
		uint64_t above = above_high_bin_;
		for (uint32_t low = kLowBins; low-- > 0;) {
			if (above + total[low] >= k_) {
				set_threshold((high_bin_ << kLowBits) | low, above, total[low]);
				break;
			}
			above += total[low];
		}
		const uint32_t threshold_low = threshold_ & kLowMask;
		const bool single_value = total[threshold_low] == std::accumulate(total.begin(), total.end(), uint64_t{0});
		if (single_value || !low_bits_incomplete_) {
			// The bin's counts per block are the ties, or the kept low bits give them.
			for (size_t b = 0; !single_value && b < low_bits_.size(); ++b)
				ties_per_block_[b] =
				    static_cast<uint32_t>(std::count(low_bits_[b].begin(), low_bits_[b].end(), threshold_low));
			if (!keep_all_ties_) find_cutoff();
			ties_counted_ = true;
		}
		low_bits_ = {};
	} else {
		find_cutoff();
	}
	if (pass >= 1) histograms_ = {};
	if (pass >= 1 && ties_counted_) ties_per_block_ = {};
}

void TopKSelection::set_threshold(uint32_t threshold, uint64_t above, uint64_t equal) {
	threshold_ = threshold;
	ties_to_keep_ = k_ - above;
	keep_all_ties_ = ties_to_keep_ == equal;
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

void TopKSelection::mark(uint64_t block, std::span<const float> values, std::span<uint8_t> kept) const {
	const uint32_t threshold = threshold_;
	const bool ties_kept = keep_all_ties_ || block < cutoff_block_;
	uint64_t ties_left = block == cutoff_block_ && !keep_all_ties_ ? ties_in_cutoff_block_ : 0;
	for (size_t j = 0; j < values.size(); ++j) {
		const uint32_t key = magnitude_key(values[j]);
		bool keep = keep_all_ || key > threshold || (ties_kept && key == threshold);
		if (!keep && key == threshold && ties_left > 0) {
			ties_left--;
			keep = true;
		}
		kept[j] = keep ? 1 : 0;
	}
}

} // namespace weld
