// The whole-tensor implementation a method that streams keeps as the reference of its
// BlockMerge: tests compare the two. Find it with dynamic_cast on the method.
#pragma once

#include "methods/method.h"

namespace weld {

class WholeTensorReference {
public:
	virtual ~WholeTensorReference() = default;
	virtual void merge_whole(const MergeInput& input, std::span<float> out) const = 0;
};

} // namespace weld
