#include "tensor/row_remap.h"

#include <algorithm>
#include <cassert>
#include <cstddef>

namespace weld {
namespace {

// The mean of the listed rows, summed in double in list order (the same bytes on any machine).
std::vector<float> fallback_row(const std::vector<std::pair<uint32_t, int64_t>>& picks,
                                const std::vector<std::vector<float>>& sources, uint64_t cols) {
	std::vector<double> sum(cols, 0.0);
	for (const auto& [source, row] : picks)
		for (uint64_t c = 0; c < cols; c++)
			sum[c] += sources[source][static_cast<uint64_t>(row) * cols + c];
	std::vector<float> out(cols, 0.0f);
	for (uint64_t c = 0; c < cols && !picks.empty(); c++)
		out[c] = static_cast<float>(sum[c] / static_cast<double>(picks.size()));
	return out;
}

} // namespace

std::vector<std::vector<float>> remap_rows(const RowRemap& remap, const std::vector<std::vector<float>>& sources,
                                           uint64_t cols) {
	assert(remap.own.size() == sources.size() && remap.fallback.size() == remap.vocab_rows);
	std::vector<std::vector<float>> out(sources.size(), std::vector<float>(remap.rows * cols, 0.0f));
	std::vector<std::vector<float>> fallbacks(remap.vocab_rows);
	for (size_t s = 0; s < sources.size(); s++) {
		auto& target = out[s];
		std::vector<double> mean(cols, 0.0);
		for (uint64_t r = 0; r < remap.rows; r++) {
			const int64_t own = remap.own[s][r];
			float* row = target.data() + r * cols;
			if (own >= 0) {
				const float* from = sources[s].data() + static_cast<uint64_t>(own) * cols;
				std::copy(from, from + cols, row);
			} else if (r < remap.vocab_rows) {
				if (fallbacks[r].empty()) fallbacks[r] = fallback_row(remap.fallback[r], sources, cols);
				std::copy(fallbacks[r].begin(), fallbacks[r].end(), row);
			} else { // a padding row this source lacks: its mean over the vocabulary rows, as mergekit pads
				for (uint64_t c = 0; c < cols && remap.vocab_rows > 0; c++)
					row[c] = static_cast<float>(mean[c] / static_cast<double>(remap.vocab_rows));
			}
			if (r < remap.vocab_rows)
				for (uint64_t c = 0; c < cols; c++)
					mean[c] += row[c];
		}
	}
	return out;
}

} // namespace weld
