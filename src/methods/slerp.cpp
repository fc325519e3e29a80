// Spherical linear interpolation between the base and one other model, treating each tensor
// as one vector (as mergekit does); nearly parallel tensors fall back to linear interpolation.
#include "methods/methods.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace weld {
namespace {

constexpr double kDotThreshold = 0.9995;
constexpr double kEps = 1e-8;

// Norm from a sum of squares, or 1 when too small to normalize by (mergekit leaves such
// vectors as they are).
double normalizer(double sum_of_squares) {
	const double norm = std::sqrt(sum_of_squares);
	return norm > kEps ? norm : 1.0;
}

// Pass 0 sums v0.v1, |v0|^2 and |v1|^2 per block (combined in block order, so any thread count
// gives the same weights); the output pass is then a fixed linear combination.
class SlerpBlocks final : public BlockMerge {
public:
	SlerpBlocks(double t, size_t v0, size_t v1, uint64_t blocks) : t_(t), v0_(v0), v1_(v1), sums_(blocks) {}

	int stat_passes() const override { return 1; }
	void observe(int, const Block& block, unsigned) override {
		// Interleaved partial sums in a fixed order, so the loop vectorizes deterministically.
		constexpr size_t kLanes = 4;
		const std::span<const float> a = block.sources[v0_], b = block.sources[v1_];
		double dot[kLanes] = {}, aa[kLanes] = {}, bb[kLanes] = {};
		const size_t whole = a.size() / kLanes * kLanes;
		for (size_t j = 0; j < whole; j += kLanes)
			for (size_t l = 0; l < kLanes; ++l) {
				const double x = a[j + l], y = b[j + l];
				dot[l] += x * y;
				aa[l] += x * x;
				bb[l] += y * y;
			}
		Sums& sums = sums_[block.index];
		for (size_t l = 0; l < kLanes; ++l) {
			sums.dot += dot[l];
			sums.aa += aa[l];
			sums.bb += bb[l];
		}
		for (size_t j = whole; j < a.size(); ++j) {
			sums.dot += static_cast<double>(a[j]) * b[j];
			sums.aa += static_cast<double>(a[j]) * a[j];
			sums.bb += static_cast<double>(b[j]) * b[j];
		}
	}
	void end_pass(int) override {
		Sums total;
		for (const Sums& s : sums_) {
			total.dot += s.dot;
			total.aa += s.aa;
			total.bb += s.bb;
		}
		const double dot = total.dot / (normalizer(total.aa) * normalizer(total.bb));
		s0_ = 1 - t_, s1_ = t_; // lerp
		if (std::fabs(dot) <= kDotThreshold) {
			const double theta0 = std::acos(std::clamp(dot, -1.0, 1.0));
			const double sin_theta0 = std::sin(theta0);
			s0_ = std::sin(theta0 - t_ * theta0) / sin_theta0;
			s1_ = std::sin(t_ * theta0) / sin_theta0;
		}
	}
	void merge(const Block& block, std::span<float> out, unsigned) override {
		const std::span<const float> a = block.sources[v0_], b = block.sources[v1_];
		for (size_t j = 0; j < out.size(); ++j)
			out[j] = static_cast<float>(s0_ * a[j] + s1_ * b[j]);
	}

private:
	struct Sums {
		double dot = 0, aa = 0, bb = 0;
	};
	double t_;
	size_t v0_, v1_;
	std::vector<Sums> sums_;
	double s0_ = 0, s1_ = 0;
};

class SlerpMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned) const override {
		check_source_count(info_, input, source_count);
		const auto base_index = static_cast<size_t>(input.base_index);
		return std::make_unique<SlerpBlocks>(global_param(info_, input, "t"), base_index, 1 - base_index,
		                                     block_count(elements));
	}

private:
	MethodInfo info_{
	    .name = "slerp",
	    .description = "Spherical interpolation between the base model and one other model",
	    .reference = "https://en.wikipedia.org/wiki/Slerp",
	    .global_params = {{.name = "t",
	                       .required = true,
	                       .help = "Interpolation factor: 0 gives the base, 1 the other"}},
	    .model_params = {},
	    .base = BaseModel::Required,
	    .min_sources = 2,
	    .max_sources = 2,
	};
};

} // namespace

const MergeMethod& slerp_method() {
	static const SlerpMethod method;
	return method;
}

} // namespace weld
