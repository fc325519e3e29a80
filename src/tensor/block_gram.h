// Dot products between the vectors a tensor's sources define (each source itself, or its
// difference from an origin source), for methods whose output is a linear combination of those
// vectors with coefficients found from their dot products alone (multislerp, karcher). Summed
// per block and combined in block order, so any thread count and block order give the same sums.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace weld {

using Gram = std::vector<std::vector<double>>; // gram[a][b] = v_a · v_b

class BlockGram {
public:
	// Vector a is sources[vectors[a]] − sources[*origin] (in double), or the source itself.
	BlockGram(std::vector<size_t> vectors, std::optional<size_t> origin, uint64_t blocks);

	// Block block_index of every source (each block once, from any thread).
	void observe(uint64_t block_index, std::span<const std::span<const float>> sources);
	// After every block was observed: the sums over the whole tensor. Frees the partials.
	Gram combine();

private:
	std::vector<size_t> vectors_;
	std::optional<size_t> origin_;
	std::vector<std::vector<double>> partials_; // per block: the upper triangle, row by row
};

// xᵀ·G·x, clamped at 0 (a squared length that rounding may push below).
double squared_length(const Gram& gram, std::span<const double> x);
// (G·x)[a] = v_a · Σ_b x_b v_b.
std::vector<double> gram_times(const Gram& gram, std::span<const double> x);

} // namespace weld
