#include "tensor/kernels.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

namespace weld {
namespace {

// NaN ranks as the largest magnitude (as torch's descending sort does) and keeps the selection
// a strict weak ordering.
inline float magnitude(float x) {
	return std::isnan(x) ? std::numeric_limits<float>::infinity() : std::fabs(x);
}

// splitmix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
inline uint64_t mix64(uint64_t z) {
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

uint64_t fnv1a64(std::string_view text) {
	uint64_t h = 0xCBF29CE484222325ull;
	for (unsigned char c : text) {
		h ^= c;
		h *= 0x100000001B3ull;
	}
	return h;
}

} // namespace

void keep_top_k_by_magnitude(std::span<float> values, size_t k) {
	const size_t n = values.size();
	if (k >= n) return;
	if (k == 0) {
		std::fill(values.begin(), values.end(), 0.0f);
		return;
	}
	std::vector<float> mags(n);
	std::transform(values.begin(), values.end(), mags.begin(), magnitude);
	// After this, mags[k-1] is the k-th largest magnitude: the threshold.
	std::nth_element(mags.begin(), mags.begin() + static_cast<std::ptrdiff_t>(k - 1), mags.end(), std::greater<>());
	const float threshold = mags[k - 1];
	size_t above = 0;
	for (float x : values)
		above += magnitude(x) > threshold;
	// Everything above the threshold stays; ties at the threshold fill the rest in index order.
	size_t ties_left = k - above;
	for (float& x : values) {
		float m = magnitude(x);
		if (m > threshold) continue;
		if (m == threshold && ties_left > 0) {
			--ties_left;
			continue;
		}
		x = 0.0f;
	}
}

double l1_norm(std::span<const float> values) {
	double sum = 0;
	for (float x : values)
		sum += std::fabs(static_cast<double>(x));
	return sum;
}

uint64_t random_stream_key(uint64_t seed, std::string_view tensor_name, uint64_t model_index) {
	uint64_t key = mix64(seed + kGolden);
	key = mix64(key ^ fnv1a64(tensor_name));
	return mix64(key ^ (model_index + kGolden));
}

double random_uniform(uint64_t stream_key, uint64_t index) {
	// The index-th output of a splitmix64 generator seeded with stream_key.
	uint64_t bits = mix64(stream_key + (index + 1) * kGolden);
	return static_cast<double>(bits >> 11) * 0x1p-53;
}

} // namespace weld
