#include "tensor/magprune.h"

#include "methods/method.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <fmt/format.h>
#include <limits>
#include <utility>

namespace weld {
namespace {

// As della_magprune: NaN ranks as the largest magnitude.
inline float magnitude(float x) {
	return std::isnan(x) ? std::numeric_limits<float>::infinity() : std::fabs(x);
}

// Per thread: the sort keys of one row, and the radix sort's second buffer.
std::vector<uint64_t>& order_scratch() {
	thread_local std::vector<uint64_t> order;
	return order;
}
std::vector<uint64_t>& radix_scratch() {
	thread_local std::vector<uint64_t> scratch;
	return scratch;
}
std::vector<double>& draw_scratch() {
	thread_local std::vector<double> draws;
	return draws;
}

// Sorts (magnitude bits << 32 | index) keys, given in index order, by their magnitude bits: a
// stable LSD radix sort on 8-bit digits, so equal magnitudes stay in index order: the order
// std::sort gives the whole keys, in a few linear passes instead of n log n comparisons. Only
// the bits that vary take part (task vectors of bfloat16 models have about 16 significant
// bits: two passes), and digits every key shares are skipped.
void sort_by_magnitude(std::vector<uint64_t>& keys) {
	constexpr int kDigitBits = 8;
	constexpr uint32_t kBins = 1u << kDigitBits, kMask = kBins - 1;
	uint32_t any = 0, all = ~0u;
	for (const uint64_t key : keys) {
		const auto bits = static_cast<uint32_t>(key >> 32);
		any |= bits, all &= bits;
	}
	const uint32_t varying = any & ~all; // bits that differ between keys
	if (varying == 0) return;            // one magnitude: index order already
	const int low = std::countr_zero(varying),
	          digits = (32 - std::countl_zero(varying) - low + kDigitBits - 1) / kDigitBits;
	uint32_t counts[4 * kBins] = {};
	for (const uint64_t key : keys) {
		const uint32_t bits = static_cast<uint32_t>(key >> 32) >> low;
		for (int digit = 0; digit < digits; ++digit)
			++counts[digit * kBins + (bits >> (digit * kDigitBits) & kMask)];
	}
	std::vector<uint64_t>& other = radix_scratch();
	other.resize(keys.size());
	for (int digit = 0; digit < digits; ++digit) {
		uint32_t* count = &counts[digit * kBins];
		if (std::find(count, count + kBins, keys.size()) != count + kBins) continue; // one bin holds all
		uint32_t start = 0;
		for (uint32_t bin = 0; bin < kBins; ++bin)
			start += std::exchange(count[bin], start);
		const int shift = low + digit * kDigitBits;
		for (const uint64_t key : keys)
			other[count[static_cast<uint32_t>(key >> 32) >> shift & kMask]++] = key;
		keys.swap(other);
	}
}

} // namespace

RowMagprune::RowMagprune(uint64_t n, uint64_t row_length, double density, double epsilon, uint64_t stream_key,
                         bool record)
    : n_(n), row_(row_length == 0 || n % row_length != 0 ? n : row_length), density_(density), epsilon_(epsilon),
      key_(stream_key) {
	if (row_ >= (1ull << 32)) throw Error(fmt::format("della: rows of {} elements: at most 2^32 - 1", row_));
	if (record) recorded_bits_.resize((n_ + 63) / 64);
	for (uint64_t row = 0; row_ > 0 && row * row_ < n_ && !crossing_rows_; ++row)
		crossing_rows_ = crosses(row);
}

bool RowMagprune::crosses(uint64_t row) const {
	const uint64_t first = row * row_, last = first + row_ - 1;
	return first / kBlockElements != last / kBlockElements;
}

template <class F> void RowMagprune::decide(std::span<const float> values, uint64_t first, F&& keep) const {
	// della_magprune on one row: rank by ascending magnitude, equal magnitudes in index order.
	// Sorting (magnitude bits, index) pairs as integers gives that order (|x| orders like its
	// bits; NaN as +inf).
	const size_t length = values.size();
	std::vector<uint64_t>& order = order_scratch();
	order.resize(length);
	for (size_t j = 0; j < length; ++j)
		order[j] = static_cast<uint64_t>(std::bit_cast<uint32_t>(magnitude(values[j]))) << 32 | j;
	sort_by_magnitude(order);
	// The draws in index order first: that loop vectorizes, the one in rank order cannot.
	std::vector<double>& draws = draw_scratch();
	draws.resize(length);
	for (size_t j = 0; j < length; ++j)
		draws[j] = random_uniform(key_, first + j);
	for (size_t r = 0; r < length; ++r) {
		const double p =
		    length == 1 ? density_
		                : density_ - epsilon_ + 2 * epsilon_ * static_cast<double>(r) / static_cast<double>(length - 1);
		const auto j = static_cast<uint32_t>(order[r]);
		keep(j, draws[j] < p);
	}
}

void RowMagprune::observe(uint64_t offset, std::span<const float> values) {
	const uint64_t end = offset + values.size();
	for (uint64_t row = offset / row_; row * row_ < end; ++row) {
		if (!crosses(row)) continue;
		const uint64_t row_first = row * row_;
		const uint64_t from = std::max(row_first, offset), to = std::min(row_first + row_, end);
		std::vector<float> complete;
		{
			std::lock_guard lock(mutex_);
			Pending& p = pending_[row];
			if (p.values.empty()) p.values.resize(row_);
			std::copy(values.begin() + static_cast<std::ptrdiff_t>(from - offset),
			          values.begin() + static_cast<std::ptrdiff_t>(to - offset),
			          p.values.begin() + static_cast<std::ptrdiff_t>(from - row_first));
			p.filled += to - from;
			if (p.filled < row_) continue;
			complete = std::move(p.values);
			pending_.erase(row);
		}
		std::vector<bool> kept(row_);
		decide(complete, row_first, [&](uint32_t j, bool keep) { kept[j] = keep; });
		std::lock_guard lock(mutex_);
		kept_[row] = std::move(kept);
	}
}

void RowMagprune::end_pass() {
	if (!pending_.empty())
		throw Error(fmt::format("della: {} row(s) of {} elements were not seen whole", pending_.size(), row_));
}

void RowMagprune::apply(uint64_t offset, std::span<float> values) {
	const uint64_t end = offset + values.size();
	if (recorded_) {
		for (uint64_t j = offset; j < end; ++j)
			if (!(recorded_bits_[j / 64] >> (j % 64) & 1)) values[j - offset] = 0.0f;
		return;
	}
	// Blocks start at multiples of 64 elements, so each writes words of its own.
	const bool record = !recorded_bits_.empty();
	auto decision = [&](uint64_t j, bool keep) { // branch-free: keep is a coin flip
		float& value = values[j - offset];
		value = std::bit_cast<float>(std::bit_cast<uint32_t>(value) & (0u - static_cast<uint32_t>(keep)));
		if (record) recorded_bits_[j / 64] |= uint64_t{keep} << (j % 64);
	};
	for (uint64_t row = offset / row_; row * row_ < end; ++row) {
		const uint64_t row_first = row * row_;
		const uint64_t from = std::max(row_first, offset), to = std::min(row_first + row_, end);
		if (!crosses(row)) {
			// The whole row lies in this block.
			decide(values.subspan(from - offset, to - from), row_first,
			       [&](uint32_t j, bool keep) { decision(row_first + j, keep); });
			continue;
		}
		const std::vector<bool>& kept = kept_.at(row);
		for (uint64_t j = from; j < to; ++j)
			decision(j, kept[j - row_first]);
	}
}

void RowMagprune::end_record() {
	if (recorded_bits_.empty()) return;
	recorded_ = true;
	kept_ = {};
}

} // namespace weld
