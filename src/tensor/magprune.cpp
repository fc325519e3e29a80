#include "tensor/magprune.h"

#include "methods/method.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <limits>
#include <numeric>

namespace weld {
namespace {

// As della_magprune: NaN ranks as the largest magnitude.
inline float magnitude(float x) {
	return std::isnan(x) ? std::numeric_limits<float>::infinity() : std::fabs(x);
}

} // namespace

RowMagprune::RowMagprune(uint64_t n, uint64_t row_length, double density, double epsilon, uint64_t stream_key)
    : n_(n), row_(row_length == 0 || n % row_length != 0 ? n : row_length), density_(density), epsilon_(epsilon),
      key_(stream_key) {
	for (uint64_t row = 0; row_ > 0 && row * row_ < n_ && !crossing_rows_; ++row)
		crossing_rows_ = crosses(row);
}

bool RowMagprune::crosses(uint64_t row) const {
	const uint64_t first = row * row_, last = first + row_ - 1;
	return first / kBlockElements != last / kBlockElements;
}

template <class F> void RowMagprune::decide(std::span<const float> values, uint64_t first, F&& keep) const {
	// della_magprune on one row: rank by ascending magnitude, equal magnitudes in index order.
	const size_t length = values.size();
	std::vector<uint32_t> order(length);
	std::iota(order.begin(), order.end(), 0u);
	std::stable_sort(order.begin(), order.end(),
	                 [&](uint32_t a, uint32_t b) { return magnitude(values[a]) < magnitude(values[b]); });
	for (size_t r = 0; r < length; ++r) {
		const double p =
		    length == 1 ? density_
		                : density_ - epsilon_ + 2 * epsilon_ * static_cast<double>(r) / static_cast<double>(length - 1);
		const uint32_t j = order[r];
		keep(j, random_uniform(key_, first + j) < p);
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

void RowMagprune::apply(uint64_t offset, std::span<float> values) const {
	const uint64_t end = offset + values.size();
	for (uint64_t row = offset / row_; row * row_ < end; ++row) {
		const uint64_t row_first = row * row_;
		const uint64_t from = std::max(row_first, offset), to = std::min(row_first + row_, end);
		if (!crosses(row)) {
			// The whole row lies in this block.
			const std::span<float> part = values.subspan(from - offset, to - from);
			decide(part, row_first, [&](uint32_t j, bool keep) {
				if (!keep) part[j] = 0.0f;
			});
			continue;
		}
		const std::vector<bool>& kept = kept_.at(row);
		for (uint64_t j = from; j < to; ++j)
			if (!kept[j - row_first]) values[j - offset] = 0.0f;
	}
}

} // namespace weld
