#include "tensor/spherical.h"

#include "util/error.h"

#include <cmath>
#include <fmt/format.h>

namespace weld {
namespace {

void check_shape(std::string_view tensor, const std::vector<uint64_t>& shape, size_t numel) {
	uint64_t product = 1;
	for (uint64_t d : shape)
		product *= d;
	if (!shape.empty() && product != numel)
		throw Error(fmt::format("tensor '{}': shape holds {} elements, the data has {}", tensor, product, numel));
}

} // namespace

VectorLayout VectorLayout::whole(size_t numel) {
	return {.count = 1, .length = numel, .vector_stride = 0, .element_stride = 1};
}

VectorLayout VectorLayout::rows(std::string_view tensor, const std::vector<uint64_t>& shape, size_t numel) {
	check_shape(tensor, shape, numel);
	const size_t length = shape.empty() ? numel : static_cast<size_t>(shape.back());
	if (length == 0) return {.count = 0, .length = 0, .vector_stride = 0, .element_stride = 1};
	return {.count = numel / length, .length = length, .vector_stride = length, .element_stride = 1};
}

VectorLayout VectorLayout::columns(std::string_view tensor, const std::vector<uint64_t>& shape, size_t numel) {
	check_shape(tensor, shape, numel);
	const size_t length = shape.empty() ? numel : static_cast<size_t>(shape.front());
	if (length == 0) return {.count = 0, .length = 0, .vector_stride = 0, .element_stride = 1};
	const size_t count = numel / length;
	return {.count = count, .length = length, .vector_stride = 1, .element_stride = count};
}

double dot_product(std::span<const float> a, std::span<const float> b) {
	double sum = 0;
	for (size_t i = 0; i < a.size(); ++i)
		sum += static_cast<double>(a[i]) * b[i];
	return sum;
}

double euclidean_norm(std::span<const float> a) {
	return std::sqrt(dot_product(a, a));
}

double euclidean_norm(std::span<const double> a) {
	double sum = 0;
	for (double x : a)
		sum += x * x;
	return std::sqrt(sum);
}

} // namespace weld
