// Arcee Fusion, as mergekit computes it: each element of the other model's change from the base
// scores |Δ| times the KL divergence between the softmaxes of its row in the model and in the
// base; only changes scoring at least median + 1.5·IQR of all scores are kept.
#include "methods/methods.h"
#include "tensor/spherical.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

namespace weld {
namespace {

// softmax(x) over one row, each probability plus 1e-8 as in mergekit.
std::vector<double> softmax(std::span<const float> x) {
	const double peak = x.empty() ? 0.0 : *std::max_element(x.begin(), x.end());
	std::vector<double> p(x.size());
	double sum = 0;
	for (size_t k = 0; k < x.size(); ++k)
		sum += p[k] = std::exp(x[k] - peak);
	for (double& v : p)
		v = v / sum + 1e-8;
	return p;
}

// The value at index floor(q·(n−1)) of the sorted values (mergekit's approximate quantile).
float quantile(std::vector<float>& values, double q) {
	const auto index = static_cast<size_t>(std::floor(q * static_cast<double>(values.size() - 1)));
	std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(index), values.end());
	return values[index];
}

class ArceeFusionMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		if (out.empty()) return;
		const auto base_index = static_cast<size_t>(input.base_index);
		const std::span<const float> base = input.sources[base_index];
		const std::span<const float> model = input.sources[1 - base_index];
		const std::vector<float> importance = scores(input, base, model);
		std::vector<float> sorted = importance;
		const float median = quantile(sorted, 0.5);
		const float q1 = quantile(sorted, 0.25), q3 = quantile(sorted, 0.75);
		const float threshold = median + 1.5f * (q3 - q1);
		size_t kept = 0;
		for (size_t j = 0; j < out.size(); ++j) {
			const bool keep = importance[j] >= threshold;
			kept += keep;
			out[j] = keep ? base[j] + (model[j] - base[j]) : base[j];
		}
		if (input.notes)
			input.notes->push_back(
			    fmt::format("arcee_fusion: threshold {:.6g}, kept {} of {} changes", threshold, kept, out.size()));
	}

private:
	// |Δ| times the KL divergence of the element's row (last dimension; a 1-D tensor is one row).
	static std::vector<float> scores(const MergeInput& input, std::span<const float> base,
	                                 std::span<const float> model) {
		const VectorLayout rows = VectorLayout::rows(input.tensor_name, input.shape, base.size());
		std::vector<float> importance(base.size());
		for (size_t r = 0; r < rows.count; ++r) {
			const size_t first = r * rows.vector_stride;
			const std::vector<double> p = softmax(model.subspan(first, rows.length));
			const std::vector<double> q = softmax(base.subspan(first, rows.length));
			double kl = 0;
			for (size_t k = 0; k < p.size(); ++k)
				kl += p[k] * std::log(p[k] / q[k]);
			for (size_t j = first; j < first + rows.length; ++j)
				importance[j] = static_cast<float>(std::fabs(model[j] - base[j]) * kl);
		}
		return importance;
	}

	MethodInfo info_{
	    .name = "arcee_fusion",
	    .description = "Keeps the other model's changes whose |Δ|·KL importance is an outlier (above median + 1.5 IQR)",
	    .reference = "https://arcee.ai",
	    .global_params = {},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .min_sources = 2,
	    .max_sources = 2,
	};
};

} // namespace

const MergeMethod& arcee_fusion_method() {
	static const ArceeFusionMethod method;
	return method;
}

} // namespace weld
