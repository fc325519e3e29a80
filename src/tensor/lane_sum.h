// A sum in a fixed order that vectorizes: term(j) for j < n goes to running sum j % kLanes, and
// the lanes are added in lane order at the end. The order depends on n alone, so the result is the
// same for any thread count or block order; with an inlined term the compiler keeps the lanes in
// vector registers.
#pragma once

#include <cstddef>

namespace weld {

template <class Term> double lane_sum(size_t n, Term&& term) {
	constexpr size_t kLanes = 8;
	double lanes[kLanes] = {};
	size_t j = 0;
	for (; j + kLanes <= n; j += kLanes)
		for (size_t l = 0; l < kLanes; ++l)
			lanes[l] += term(j + l);
	for (; j < n; ++j)
		lanes[j % kLanes] += term(j);
	double sum = 0;
	for (double lane : lanes)
		sum += lane;
	return sum;
}

} // namespace weld
