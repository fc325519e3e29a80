// Admits work while its buffers fit a byte budget; one item is always admitted, so an item
// larger than the budget still runs (alone). Shared by the merge executor and weld analyze.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace weld {

class MemoryBudget {
public:
	explicit MemoryBudget(uint64_t limit) : limit_(limit) {}

	void acquire(uint64_t bytes) {
		std::unique_lock lock(mutex_);
		freed_.wait(lock, [&] { return in_use_ == 0 || in_use_ + bytes <= limit_; });
		in_use_ += bytes;
	}
	void release(uint64_t bytes) {
		{
			std::lock_guard lock(mutex_);
			in_use_ -= bytes;
		}
		freed_.notify_all();
	}

private:
	uint64_t limit_;
	uint64_t in_use_ = 0;
	std::mutex mutex_;
	std::condition_variable freed_;
};

} // namespace weld
