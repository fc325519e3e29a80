#include "tensor/kernels.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

namespace weld {
namespace {

// NaN ranks as the largest magnitude (as torch's descending sort does) and keeps the selection
// a strict weak ordering.
inline float magnitude(float x) {
	return std::isnan(x) ? std::numeric_limits<float>::infinity() : std::fabs(x);
}

using random_detail::kGolden;
using random_detail::mix64;

uint64_t fnv1a64(std::string_view text) {
	uint64_t h = 0xCBF29CE484222325ull;
	for (unsigned char c : text) {
		h ^= c;
		h *= 0x100000001B3ull;
	}
	return h;
}

// Membership in the k largest magnitudes of values, asked element by element in index order;
// ties at the k-th magnitude are admitted in index order. mags is scratch.
class TopMagnitudes {
public:
	TopMagnitudes(std::span<const float> values, std::vector<float>& mags, size_t k) : k_(k), all_(k >= values.size()) {
		if (all_ || k == 0) return;
		mags.resize(values.size());
		std::transform(values.begin(), values.end(), mags.begin(), magnitude);
		// After this, mags[k-1] is the k-th largest magnitude: the threshold.
		std::nth_element(mags.begin(), mags.begin() + static_cast<std::ptrdiff_t>(k - 1), mags.end(), std::greater<>());
		threshold_ = mags[k - 1];
		size_t above = 0;
		for (float x : values)
			above += magnitude(x) > threshold_;
		ties_left_ = k - above;
	}

	bool next(float x) {
		if (all_) return true;
		if (k_ == 0) return false;
		const float m = magnitude(x);
		if (m > threshold_) return true;
		if (m == threshold_ && ties_left_ > 0) {
			--ties_left_;
			return true;
		}
		return false;
	}

private:
	size_t k_;
	bool all_;
	float threshold_ = 0;
	size_t ties_left_ = 0;
};

} // namespace

void keep_top_k_by_magnitude(std::span<float> values, size_t k) {
	keep_magnitude_band(values, 0, k);
}

void keep_magnitude_band(std::span<float> values, size_t skip_largest, size_t keep) {
	const size_t n = values.size();
	skip_largest = std::min(skip_largest, n);
	keep = std::min(keep, n - skip_largest);
	if (skip_largest == 0 && keep == n) return;
	std::vector<float> mags;
	// Both sets are fixed before any element is zeroed.
	TopMagnitudes outer(values, mags, skip_largest + keep);
	TopMagnitudes inner(values, mags, skip_largest);
	for (float& x : values) {
		const bool in_outer = outer.next(x), in_inner = inner.next(x);
		if (!in_outer || in_inner) x = 0.0f;
	}
}

void della_magprune(std::span<float> values, size_t row_length, double density, double epsilon, uint64_t stream_key) {
	if (values.empty()) return;
	if (row_length == 0 || values.size() % row_length != 0) row_length = values.size();
	std::vector<size_t> order(row_length);
	for (size_t start = 0; start < values.size(); start += row_length) {
		// Rank the row by ascending magnitude; a stable sort puts equal magnitudes in index order.
		std::iota(order.begin(), order.end(), start);
		std::stable_sort(order.begin(), order.end(),
		                 [&](size_t a, size_t b) { return magnitude(values[a]) < magnitude(values[b]); });
		for (size_t r = 0; r < row_length; ++r) {
			const double p =
			    row_length == 1
			        ? density
			        : density - epsilon + 2 * epsilon * static_cast<double>(r) / static_cast<double>(row_length - 1);
			const size_t j = order[r];
			if (!(random_uniform(stream_key, j) < p)) values[j] = 0.0f;
		}
	}
}

double l1_norm(std::span<const float> values) {
	// Eight interleaved partial sums in a fixed order: the loop vectorizes, and the result
	// depends only on the values.
	constexpr size_t kLanes = 8;
	double lanes[kLanes] = {};
	const size_t whole = values.size() / kLanes * kLanes;
	for (size_t j = 0; j < whole; j += kLanes)
		for (size_t l = 0; l < kLanes; ++l)
			lanes[l] += std::fabs(static_cast<double>(values[j + l]));
	double sum = 0;
	for (double lane : lanes)
		sum += lane;
	for (size_t j = whole; j < values.size(); ++j)
		sum += std::fabs(static_cast<double>(values[j]));
	return sum;
}

void random_drop(std::span<float> values, uint64_t stream_key, uint64_t first_index, double probability) {
	// random_uniform(key, i) < p  <=>  (bits >> 11) < p * 2^53 (exact: a power-of-two scale)
	// <=>  (bits >> 11) < ceil(p * 2^53), all in integers.
	const double scaled = std::ceil(std::clamp(probability, 0.0, 1.0) * 0x1p53);
	const auto limit = static_cast<uint64_t>(scaled);
	for (size_t j = 0; j < values.size(); ++j) {
		const uint64_t bits = mix64(stream_key + (first_index + j + 1) * kGolden) >> 11;
		const uint32_t keep = 0u - static_cast<uint32_t>(bits < limit);
		values[j] = std::bit_cast<float>(std::bit_cast<uint32_t>(values[j]) & keep);
	}
}

uint64_t random_stream_key(uint64_t seed, std::string_view tensor_name, uint64_t model_index) {
	uint64_t key = mix64(seed + kGolden);
	key = mix64(key ^ fnv1a64(tensor_name));
	return mix64(key ^ (model_index + kGolden));
}

} // namespace weld
