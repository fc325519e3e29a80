// Helpers of the tests that call libtorch directly (tests/nn_*_test.cpp in weld_nn_tests).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace weld::test {

// A batch of one token sequence, as the runtime's forward passes take it.
inline at::Tensor ids_tensor(const std::vector<int64_t>& ids) {
	return at::tensor(at::ArrayRef<int64_t>(ids), at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
}

// Largest |a - b|, computed in double.
inline double max_difference(const at::Tensor& a, const at::Tensor& b) {
	return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

} // namespace weld::test
