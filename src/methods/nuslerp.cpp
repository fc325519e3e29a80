// NuSLERP, mergekit's generalised slerp: two models interpolated on the sphere with
// t = w2 / (w1 + w2), over the whole tensor (nuslerp_flatten), its rows, or its columns
// (nuslerp_row_wise). With a base model the two task vectors are slerped and added to it.
//
// Streamed: each vector's dot product and norms are summed in a statistics pass, then every
// element is a fixed combination of its two task-vector values. Rows (and the whole tensor, one
// row) are summed piece by piece in order; columns interleave every row, so their sums use exact
// fixed-point integers, which add up to the same value in any order.
#include "methods/methods.h"
#include "methods/reference.h"
#include "tensor/spherical.h"
#include "util/error.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <fmt/format.h>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>

namespace weld {
namespace {

// mergekit's thresholds: norms clamped below 1e-7, lerp where sin(theta) < 1e-8.
constexpr double kNormFloor = 1e-7;
constexpr double kColinear = 1e-8;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Slerp coefficients of one vector pair from v0·v1, |v0|² and |v1|².
std::pair<double, double> coefficients(double dot, double squares0, double squares1, double t) {
	const double cos = dot / (std::max(std::sqrt(squares0), kNormFloor) * std::max(std::sqrt(squares1), kNormFloor));
	const double theta = std::acos(std::clamp(cos, -1.0, 1.0));
	const double sin_theta = std::sin(theta);
	if (std::fabs(sin_theta) < kColinear) return {1 - t, t};
	return {std::sin((1 - t) * theta) / sin_theta, std::sin(t * theta) / sin_theta};
}

// Which sources a block merge reads: the two models and the optional base (the origin).
struct Roles {
	size_t model0, model1;
	std::optional<size_t> base;
	double t;

	float origin(const Block& block, size_t j) const { return base ? block.sources[*base][j] : 0.0f; }
	// The task vectors' values at j, as the whole-tensor code rounds them (float differences).
	float v0(const Block& block, size_t j) const { return block.sources[model0][j] - origin(block, j); }
	float v1(const Block& block, size_t j) const { return block.sources[model1][j] - origin(block, j); }
	float merged(const Block& block, size_t j, std::pair<double, double> c) const {
		return static_cast<float>((base ? block.sources[*base][j] : 0.0) + c.first * v0(block, j) +
		                          c.second * v1(block, j));
	}
};

struct PairSums {
	double dot = 0, squares0 = 0, squares1 = 0;
	PairSums& operator+=(const PairSums& other) {
		dot += other.dot, squares0 += other.squares0, squares1 += other.squares1;
		return *this;
	}
};

// Rows of `length` elements (the whole tensor: one row of all of them). A row inside one block
// is summed in the same order as the whole-tensor code; a row that crosses blocks is summed per
// piece, the pieces added in block order.
class NuSlerpRows final : public BlockMerge {
public:
	NuSlerpRows(Roles roles, uint64_t length, uint64_t elements)
	    : roles_(roles), length_(length), rows_(length == 0 ? 0 : elements / length), pieces_(block_count(elements)) {}

	int stat_passes() const override { return 1; }

	void observe(int, const Block& block, unsigned) override {
		for_each_piece(block, [&](uint64_t row, size_t begin, size_t end) {
			PairSums sums;
			for (size_t j = begin; j < end; ++j) {
				const float a = roles_.v0(block, j), b = roles_.v1(block, j);
				sums.dot += static_cast<double>(a) * b;
				sums.squares0 += static_cast<double>(a) * a;
				sums.squares1 += static_cast<double>(b) * b;
			}
			const bool whole_row = block.offset + begin == row * length_ && end - begin == length_;
			if (whole_row)
				rows_[row] = sums;
			else
				pieces_[block.index].push_back({row, sums});
		});
	}

	void end_pass(int) override {
		for (const auto& pieces : pieces_)
			for (const auto& [row, sums] : pieces)
				rows_[row] += sums;
		pieces_ = {};
		coefficients_.resize(rows_.size());
		for (size_t r = 0; r < rows_.size(); ++r)
			coefficients_[r] = coefficients(rows_[r].dot, rows_[r].squares0, rows_[r].squares1, roles_.t);
		rows_ = {};
	}

	void merge(const Block& block, std::span<float> out, unsigned) override {
		for_each_piece(block, [&](uint64_t row, size_t begin, size_t end) {
			for (size_t j = begin; j < end; ++j)
				out[j] = roles_.merged(block, j, coefficients_[row]);
		});
	}

private:
	// Calls f(row, begin, end) for each row's part [begin, end) of the block (block positions).
	template <class F> void for_each_piece(const Block& block, F&& f) const {
		const uint64_t end = block.offset + block.size();
		for (uint64_t first = block.offset; first < end;) {
			const uint64_t row = first / length_, piece_end = std::min((row + 1) * length_, end);
			f(row, static_cast<size_t>(first - block.offset), static_cast<size_t>(piece_end - block.offset));
			first = piece_end;
		}
	}

	struct Piece {
		uint64_t row;
		PairSums sums;
	};
	Roles roles_;
	uint64_t length_;
	std::vector<PairSums> rows_;                          // per row, until the coefficients are known
	std::vector<std::vector<Piece>> pieces_;              // per block: its parts of rows that cross blocks
	std::vector<std::pair<double, double>> coefficients_; // per row
};

// Column sums (column c: the elements j with j % columns == c) cross every block. They are kept
// as exact integers in units of 2^-scale: a product of two float task-vector values is an exact
// double, truncated to the unit it adds up exactly, in any block order on any worker (plain
// double sums would depend on the order). Pass 0 finds the largest magnitude, which sets the
// unit so a column's sum cannot overflow 126 bits; pass 1 sums. Far finer than double rounding.
class NuSlerpColumns final : public BlockMerge {
public:
	NuSlerpColumns(Roles roles, uint64_t columns, uint64_t column_length, uint64_t elements, unsigned workers)
	    : roles_(roles), columns_(columns), column_length_(column_length), block_max_(block_count(elements)),
	      sums_(columns), locks_(kLocks), scratch_(workers) {}

	int stat_passes() const override { return 2; }

	void observe(int pass, const Block& block, unsigned worker) override {
		if (pass == 1) return add_products(block, scratch_[worker]);
		float largest = 0; // of the finite values; others make their column NaN, as in the whole code
		for (size_t j = 0; j < block.size(); ++j)
			for (const float v : {roles_.v0(block, j), roles_.v1(block, j)})
				if (std::isfinite(v)) largest = std::max(largest, std::fabs(v));
		block_max_[block.index] = largest;
	}

	void end_pass(int pass) override {
		if (pass == 0) {
			const float largest = block_max_.empty() ? 0.0f : *std::max_element(block_max_.begin(), block_max_.end());
			block_max_ = {};
			int exponent = 0; // largest < 2^exponent, so a column's sum < 2^(bit_width(length) + 2·exponent)
			std::frexp(largest, &exponent);
			scale_ = 126 - static_cast<int>(std::bit_width(column_length_)) - 2 * exponent;
			return;
		}
		coefficients_.resize(columns_);
		for (size_t c = 0; c < columns_; ++c) {
			const FixedSums& s = sums_[c];
			coefficients_[c] =
			    s.nonfinite ? std::pair{kNaN, kNaN}
			                : coefficients(to_double(s.dot), to_double(s.squares0), to_double(s.squares1), roles_.t);
		}
		sums_ = {};
	}

	void merge(const Block& block, std::span<float> out, unsigned) override {
		uint64_t column = block.offset % columns_;
		for (size_t j = 0; j < out.size(); ++j) {
			out[j] = roles_.merged(block, j, coefficients_[column]);
			if (++column == columns_) column = 0;
		}
	}

private:
	__extension__ using Int128 = __int128;
	struct FixedSums {
		Int128 dot = 0, squares0 = 0, squares1 = 0;
		bool nonfinite = false;
	};
	static constexpr size_t kLocks = 64;
	static constexpr uint64_t kLockColumns = 1024; // columns guarded by one lock

	Int128 fixed(double product) const { return static_cast<Int128>(std::ldexp(product, scale_)); }
	double to_double(Int128 sum) const { return std::ldexp(static_cast<double>(sum), -scale_); }

	// Sums the block's products per column locally, then adds them to the shared sums.
	void add_products(const Block& block, std::vector<FixedSums>& local) {
		const size_t size = block.size(), span = static_cast<size_t>(std::min<uint64_t>(columns_, size));
		local.assign(span, {});
		for (size_t j = 0, k = 0; j < size; ++j, k = k + 1 == span ? 0 : k + 1) {
			const float a = roles_.v0(block, j), b = roles_.v1(block, j);
			FixedSums& s = local[k];
			if (!std::isfinite(a) || !std::isfinite(b)) {
				s.nonfinite = true;
				continue;
			}
			s.dot += fixed(static_cast<double>(a) * b);
			s.squares0 += fixed(static_cast<double>(a) * a);
			s.squares1 += fixed(static_cast<double>(b) * b);
		}
		const uint64_t first = block.offset % columns_;
		for (size_t k = 0; k < span;) {
			const uint64_t column = (first + k) % columns_, group = column / kLockColumns;
			const uint64_t group_end = std::min((group + 1) * kLockColumns, columns_);
			const size_t stop = static_cast<size_t>(std::min<uint64_t>(span, k + (group_end - column)));
			const std::lock_guard lock(locks_[group % kLocks]);
			for (uint64_t c = column; k < stop; ++k, ++c) {
				FixedSums& s = sums_[c];
				s.dot += local[k].dot, s.squares0 += local[k].squares0, s.squares1 += local[k].squares1;
				s.nonfinite = s.nonfinite || local[k].nonfinite;
			}
		}
	}

	Roles roles_;
	uint64_t columns_, column_length_;
	std::vector<float> block_max_; // pass 0: per block, the largest finite |task-vector value|
	int scale_ = 0;
	std::vector<FixedSums> sums_; // per column
	std::vector<std::mutex> locks_;
	std::vector<std::vector<FixedSums>> scratch_;         // per worker: one block's column sums
	std::vector<std::pair<double, double>> coefficients_; // per column
};

class NuSlerpMethod final : public MergeMethod, public WholeTensorReference {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		merge_in_blocks(*block_merge(input, input.sources.size(), out.size(), 1), input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned workers) const override {
		check_source_count(info_, input, source_count);
		const Roles roles = roles_of(input, source_count);
		const VectorLayout layout = layout_of(input, elements);
		if (layout.element_stride != 1 && layout.count > 1)
			return std::make_unique<NuSlerpColumns>(roles, layout.count, layout.length, elements,
			                                        std::max(1u, workers));
		return std::make_unique<NuSlerpRows>(roles, layout.length, elements);
	}

	// The whole-tensor form, kept as the reference of the streamed one.
	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const Roles roles = roles_of(input, input.sources.size());
		const VectorLayout layout = layout_of(input, out.size());
		const float* base = roles.base ? input.sources[*roles.base].data() : nullptr;
		std::vector<float> v0(layout.length), v1(layout.length);
		for (size_t v = 0; v < layout.count; ++v) {
			for (size_t k = 0; k < layout.length; ++k) {
				const size_t j = layout.at(v, k);
				const float origin = base ? base[j] : 0.0f;
				v0[k] = input.sources[roles.model0][j] - origin;
				v1[k] = input.sources[roles.model1][j] - origin;
			}
			const auto [c0, c1] = coefficients(dot_product(v0, v1), dot_product(v0, v0), dot_product(v1, v1), roles.t);
			for (size_t k = 0; k < layout.length; ++k) {
				const size_t j = layout.at(v, k);
				out[j] = static_cast<float>((base ? base[j] : 0.0) + c0 * v0[k] + c1 * v1[k]);
			}
		}
	}

private:
	// The two models, the base and t; throws unless there are exactly two models.
	Roles roles_of(const MergeInput& input, size_t source_count) const {
		std::vector<size_t> models = model_indices(input, source_count);
		if (models.size() != 2)
			throw Error(fmt::format("tensor '{}': nuslerp merges exactly two models (plus an optional base model), "
			                        "got {}",
			                        input.tensor_name, models.size()));
		const double w0 = *source_param(info_, input, models[0], "weight");
		const double w1 = *source_param(info_, input, models[1], "weight");
		const double t = std::fabs(w0 + w1) < 1e-6 ? 0.5 : w1 / (w0 + w1);
		std::optional<size_t> base;
		if (input.base_index >= 0) base = static_cast<size_t>(input.base_index);
		return {.model0 = models[0], .model1 = models[1], .base = base, .t = t};
	}

	VectorLayout layout_of(const MergeInput& input, size_t elements) const {
		const bool flatten = global_param(info_, input, "nuslerp_flatten") != 0;
		const bool row_wise = global_param(info_, input, "nuslerp_row_wise") != 0;
		return flatten    ? VectorLayout::whole(elements)
		       : row_wise ? VectorLayout::columns(input.tensor_name, input.shape, elements)
		                  : VectorLayout::rows(input.tensor_name, input.shape, elements);
	}

	MethodInfo info_{
	    .name = "nuslerp",
	    .description = "Spherical interpolation of two models (or their task vectors) weighted by their weights",
	    .reference = "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
	    .global_params = {{.name = "nuslerp_flatten",
	                       .type = ParamType::Bool,
	                       .default_value = 1,
	                       .help = "Treat the whole tensor as one vector"},
	                      {.name = "nuslerp_row_wise",
	                       .type = ParamType::Bool,
	                       .default_value = 0,
	                       .help = "Without flatten: slerp columns (vectors along the first dimension), not rows"}},
	    .model_params = {{.name = "weight", .required = true, .help = "Relative weight; t = w2 / (w1 + w2)"}},
	    .base = BaseModel::Optional,
	    .min_sources = 2,
	    .max_sources = 3,
	};
};

} // namespace

const MergeMethod& nuslerp_method() {
	static const NuSlerpMethod method;
	return method;
}

} // namespace weld
