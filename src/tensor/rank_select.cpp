#include "tensor/rank_select.h"

#include "util/error.h"

#include <algorithm>
#include <bit>
#include <fmt/format.h>

namespace weld {
namespace {

constexpr uint32_t kBins = 1u << 16;

// Orders like the floats: negatives reversed below the positives; -0 as +0.
inline uint32_t order_key(float x) {
	const uint32_t bits = x == 0.0f ? 0u : std::bit_cast<uint32_t>(x);
	return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}

inline float from_order_key(uint32_t key) {
	return std::bit_cast<float>(key & 0x80000000u ? key & 0x7FFFFFFFu : ~key);
}

// The bin holding rank (cumulative counts from bin 0) and the count below it.
std::pair<uint32_t, uint64_t> find_bin(const std::vector<uint64_t>& total, uint64_t rank) {
	uint64_t below = 0;
	for (uint32_t bin = 0; bin < total.size(); ++bin) {
		if (below + total[bin] > rank) return {bin, below};
		below += total[bin];
	}
	throw Error(fmt::format("rank selection: rank {} of {} values", rank, below));
}

// Sums the workers' histograms (groups of kBins each) and clears them.
std::vector<uint64_t> take_total(std::vector<std::vector<uint32_t>>& histograms, size_t groups) {
	std::vector<uint64_t> total(groups * kBins, 0);
	for (auto& h : histograms) {
		for (size_t b = 0; b < h.size(); ++b)
			total[b] += h[b];
		h.clear();
	}
	return total;
}

} // namespace

RankSelection::RankSelection(uint64_t n, std::vector<uint64_t> ranks, unsigned workers)
    : ranks_(std::move(ranks)), hist_(workers) {
	if (n >= (1ull << 32)) throw Error(fmt::format("rank selection over {} elements: at most 2^32 - 1", n));
}

void RankSelection::observe(int pass, std::span<const float> values, unsigned worker) {
	std::vector<uint32_t>& h = hist_[worker];
	if (pass == 0) {
		h.resize(kBins, 0);
		for (float x : values)
			h[order_key(x) >> 16]++;
		return;
	}
	h.resize(bins_.size() * kBins, 0);
	for (float x : values) {
		const uint32_t key = order_key(x);
		// Few bins (one per distinct rank): a linear search.
		for (size_t b = 0; b < bins_.size(); ++b)
			if (key >> 16 == bins_[b]) h[b * kBins + (key & 0xFFFFu)]++;
	}
}

void RankSelection::end_pass(int pass) {
	if (pass == 0) {
		const auto total = take_total(hist_, 1);
		for (uint64_t rank : ranks_) {
			const auto [bin, below] = find_bin(total, rank);
			const auto found = std::find(bins_.begin(), bins_.end(), bin);
			bin_of_rank_.push_back(static_cast<size_t>(found - bins_.begin()));
			if (found == bins_.end()) bins_.push_back(bin);
			below_bin_.push_back(below);
		}
		return;
	}
	const auto total = take_total(hist_, bins_.size());
	for (size_t r = 0; r < ranks_.size(); ++r) {
		const size_t b = bin_of_rank_[r];
		const std::vector<uint64_t> low(total.begin() + static_cast<std::ptrdiff_t>(b * kBins),
		                                total.begin() + static_cast<std::ptrdiff_t>((b + 1) * kBins));
		const uint32_t low_key = find_bin(low, ranks_[r] - below_bin_[r]).first;
		values_.push_back(from_order_key((bins_[b] << 16) | low_key));
	}
	hist_ = {};
}

} // namespace weld
