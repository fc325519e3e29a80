// DELLA's MagPrune (della_magprune in kernels.h) over a tensor streamed in blocks. Ranks are
// taken within rows of the last dimension, which need not line up with blocks: a row inside one
// block is ranked from that block alone when it is pruned; a row that crosses a block boundary
// is gathered in one statistics pass (its parts are held only until the row is complete, then
// ranked) and only its keep decisions are stored, one bit per element. Memory: a bit per
// element of the crossing rows, plus the rows in flight while the pass runs. With record (DELLA
// with rescale prunes every block twice: for the L1 norms, then for the output), the first
// round stores every decision, a bit per element, and the second reads them back.
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

namespace weld {

class RowMagprune {
public:
	// n elements in rows of row_length (the whole tensor when 0 or not a divisor of n), with
	// della_magprune's density, epsilon and stream key.
	RowMagprune(uint64_t n, uint64_t row_length, double density, double epsilon, uint64_t stream_key,
	            bool record = false);

	// Whether rows cross block boundaries, so the gathering pass is needed.
	bool wants_pass() const { return crossing_rows_; }
	// The gathering pass: block values (task vector elements [offset, offset + size)), from any
	// thread, in any order.
	void observe(uint64_t offset, std::span<const float> values);
	// After every block was observed: checks that every crossing row was complete.
	void end_pass();

	// Zeroes the elements of values (elements [offset, offset + size), offset a multiple of
	// kBlockElements) that MagPrune drops. From any thread, once per block until end_record().
	void apply(uint64_t offset, std::span<float> values);
	// With record: every block was applied once; later calls read the stored decisions.
	void end_record();

private:
	uint64_t n_, row_;
	double density_, epsilon_;
	uint64_t key_;
	bool crossing_rows_ = false;
	struct Pending {
		std::vector<float> values;
		uint64_t filled = 0;
	};
	std::mutex mutex_;
	std::unordered_map<uint64_t, Pending> pending_;        // rows being gathered
	std::unordered_map<uint64_t, std::vector<bool>> kept_; // decisions of the crossing rows
	std::vector<uint64_t> recorded_bits_;                  // with record: every decision
	bool recorded_ = false;

	bool crosses(uint64_t row) const;
	// Calls keep(r, kept) for every element r of one row (values), whose first element has flat
	// index first.
	template <class F> void decide(std::span<const float> values, uint64_t first, F&& keep) const;
};

} // namespace weld
