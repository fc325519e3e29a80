// Distributed merges over MPI. A process started by an MPI launcher (mpirun, srun) joins the job
// as one of its ranks; any other process is a job of one rank, and then every call here is a
// plain local call. The only code that includes <mpi.h>: built without MPI (WELD_HAVE_MPI
// unset), every process is a job of one.
#pragma once

#include "util/error.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace weld {

// What every rank throws once a step failed on some rank: the message of the lowest failing
// rank, prefixed "rank N: ". Each rank knows the others saw the same, so only rank 0 need say it.
class AgreedError : public Error {
public:
	using Error::Error;
};

class Distributed {
public:
	Distributed() = default; // a job of one process
	// Joins the MPI job (MPI_Init) when this process was started by an MPI launcher and weld was
	// built with MPI; otherwise a job of one. At most one joined object per process; it leaves
	// the job (MPI_Finalize) when destroyed.
	static Distributed join();
	~Distributed();
	Distributed(const Distributed&) = delete;
	Distributed& operator=(const Distributed&) = delete;

	unsigned rank() const { return rank_; }
	unsigned size() const { return size_; }
	bool is_root() const { return rank_ == 0; }

	// Collective calls: every rank makes them, in the same order, or the job hangs. Code between
	// them must not throw past them, which agree() ensures for what it runs.

	// Runs step on every rank, then all compare: if step threw on any rank, every rank throws
	// AgreedError with the lowest failing rank's message. With one rank, step runs as is and
	// what it throws passes unchanged.
	void agree(const std::function<void()>& step) const;
	// Rank 0's text, on every rank.
	std::string broadcast(const std::string& text) const;
	// Every rank's values (the same count from each), concatenated in rank order, on every rank.
	std::vector<uint64_t> all_gather(const std::vector<uint64_t>& values) const;
	// Ends every rank of the job with `status`: the way out of a failure the ranks could not
	// agree on (a rank that stopped taking part would leave the others waiting forever).
	[[noreturn]] void abort(int status) const;

private:
	struct Joined {};
	explicit Distributed(Joined);

	unsigned rank_ = 0, size_ = 1;
	bool joined_ = false; // this object called MPI_Init
};

} // namespace weld
