// Helpers for methods that treat a tensor (or each of its rows or columns) as vectors on a
// hypersphere: how a tensor splits into vectors, and dot products and norms in double.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace weld {

// A tensor seen as `count` vectors of `length` elements each: element k of vector v is at
// v * vector_stride + k * element_stride of the flat (row-major) tensor.
struct VectorLayout {
	size_t count = 1;
	size_t length = 0;
	size_t vector_stride = 0;
	size_t element_stride = 1;

	size_t at(size_t v, size_t k) const { return v * vector_stride + k * element_stride; }

	// The whole tensor as one vector.
	static VectorLayout whole(size_t numel);
	// One vector per index of the last dimension's rows (torch's dim=-1); a 1-D or empty
	// shape is one row. Throws weld::Error naming the tensor when shape does not hold numel
	// elements.
	static VectorLayout rows(std::string_view tensor, const std::vector<uint64_t>& shape, size_t numel);
	// One vector along the first dimension for every other index (torch's dim=0).
	static VectorLayout columns(std::string_view tensor, const std::vector<uint64_t>& shape, size_t numel);
};

// Dot product and Euclidean norm, accumulated in double.
double dot_product(std::span<const float> a, std::span<const float> b);
double euclidean_norm(std::span<const float> a);
double euclidean_norm(std::span<const double> a);

} // namespace weld
