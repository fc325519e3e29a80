#include "tensor/block_gram.h"
#include "tensor/lane_sum.h"

#include <algorithm>

namespace weld {
namespace {

// Σ (x − o)(y − o) over size elements (o = 0 without origin), in lane_sum's fixed order.
double dot(const float* x, const float* y, const float* origin, size_t size) {
	return lane_sum(size, [&](size_t j) {
		const double o = origin ? origin[j] : 0.0;
		return (static_cast<double>(x[j]) - o) * (static_cast<double>(y[j]) - o);
	});
}

} // namespace

BlockGram::BlockGram(std::vector<size_t> vectors, std::optional<size_t> origin, uint64_t blocks)
    : vectors_(std::move(vectors)), origin_(origin),
      partials_(blocks, std::vector<double>(vectors_.size() * (vectors_.size() + 1) / 2)) {}

void BlockGram::observe(uint64_t block_index, std::span<const std::span<const float>> sources) {
	const size_t count = vectors_.size(), size = sources.empty() ? 0 : sources[0].size();
	const float* origin = origin_ ? sources[*origin_].data() : nullptr;
	std::vector<double>& partial = partials_[block_index];
	size_t slot = 0;
	for (size_t a = 0; a < count; ++a)
		for (size_t b = a; b < count; ++b) {
			const float* x = sources[vectors_[a]].data();
			const float* y = sources[vectors_[b]].data();
			partial[slot++] = origin ? dot(x, y, origin, size) : dot(x, y, nullptr, size);
		}
}

Gram BlockGram::combine() {
	const size_t count = vectors_.size();
	Gram gram(count, std::vector<double>(count));
	size_t slot = 0;
	for (size_t a = 0; a < count; ++a)
		for (size_t b = a; b < count; ++b, ++slot) {
			double sum = 0;
			for (const auto& partial : partials_)
				sum += partial[slot];
			gram[a][b] = gram[b][a] = sum;
		}
	partials_ = {};
	return gram;
}

double squared_length(const Gram& gram, std::span<const double> x) {
	const std::vector<double> gx = gram_times(gram, x);
	double sum = 0;
	for (size_t a = 0; a < x.size(); ++a)
		sum += x[a] * gx[a];
	return std::max(sum, 0.0);
}

std::vector<double> gram_times(const Gram& gram, std::span<const double> x) {
	std::vector<double> out(x.size());
	for (size_t a = 0; a < x.size(); ++a)
		for (size_t b = 0; b < x.size(); ++b)
			out[a] += gram[a][b] * x[b];
	return out;
}

} // namespace weld
