#include "tensor/tall.h"

#include <cassert>
#include <cmath>

namespace weld {

void tall_mask(std::span<const float> mtl, std::span<const float> task_vector, double lambda, std::span<uint8_t> mask) {
	assert(task_vector.size() == mtl.size() && mask.size() == mtl.size());
	for (size_t j = 0; j < mtl.size(); ++j) {
		const double tau = task_vector[j];
		const double rest = static_cast<double>(mtl[j]) - tau; // what the other tasks add here
		mask[j] = std::fabs(tau) > lambda * std::fabs(rest) ? 1 : 0;
	}
}

void tall_masks(std::span<const float> mtl, const std::vector<std::span<const float>>& task_vectors,
                const std::vector<double>& lambdas, std::vector<std::vector<uint8_t>>& masks) {
	assert(lambdas.size() == task_vectors.size());
	masks.resize(task_vectors.size());
	for (size_t t = 0; t < task_vectors.size(); ++t) {
		masks[t].resize(mtl.size());
		tall_mask(mtl, task_vectors[t], lambdas[t], masks[t]);
	}
}

void consensus_mask(const std::vector<std::vector<uint8_t>>& masks, double k, std::vector<uint8_t>& consensus) {
	consensus.assign(masks.empty() ? 0 : masks[0].size(), 0);
	for (size_t j = 0; j < consensus.size(); ++j) {
		size_t count = 0;
		for (const auto& mask : masks)
			count += mask[j];
		consensus[j] = static_cast<double>(count) >= k ? 1 : 0;
	}
}

void tall_reconstruct(std::span<const float> base, std::span<const float> mtl, std::span<const uint8_t> mask,
                      std::span<float> out) {
	assert(mtl.size() == base.size() && mask.size() == base.size() && out.size() == base.size());
	for (size_t j = 0; j < base.size(); ++j)
		out[j] = mask[j] ? base[j] + mtl[j] : base[j];
}

} // namespace weld
