#include "exec/distributed.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#ifdef WELD_HAVE_MPI
#include <mpi.h>
#endif

namespace weld {

#ifdef WELD_HAVE_MPI
namespace {

// Launchers say so in the environment: Open MPI's mpirun, PMI (MPICH's Hydra, srun --mpi=pmi2)
// and PMIx (srun --mpi=pmix, Open MPI 5). Only then is MPI_Init worth its start-up cost; a
// plain `weld merge` stays a single process that never touches MPI.
bool launched_by_mpi() {
	for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
		if (std::getenv(name)) return true;
	return false;
}

// MPI's own failures end the job (MPI_ERRORS_ARE_FATAL, the default), so results go unchecked.
void broadcast_from(std::string& text, int root) {
	uint64_t size = text.size();
	MPI_Bcast(&size, 1, MPI_UINT64_T, root, MPI_COMM_WORLD);
	text.resize(size);
	if (size > 0) MPI_Bcast(text.data(), static_cast<int>(size), MPI_CHAR, root, MPI_COMM_WORLD);
}

} // namespace

Distributed::Distributed(Joined) {
	if (!launched_by_mpi()) return;
	int provided = 0;
	// Worker threads never call MPI; only the thread that made this object does.
	if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
		throw Error("cannot join the MPI job (MPI_Init failed)");
	joined_ = true;
	int rank = 0, size = 1;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	rank_ = static_cast<unsigned>(rank);
	size_ = static_cast<unsigned>(size);
}

Distributed::~Distributed() {
	if (joined_) MPI_Finalize();
}

void Distributed::agree(const std::function<void()>& step) const {
	if (size_ == 1) {
		step();
		return;
	}
	// Every exception becomes this rank's vote, so that every rank reaches the collectives below.
	std::string error;
	int failed = 0;
	try {
		step();
	} catch (const std::exception& e) {
		failed = 1;
		error = e.what();
	} catch (...) {
		failed = 1;
		error = "unknown error";
	}
	std::vector<int> votes(size_);
	MPI_Allgather(&failed, 1, MPI_INT, votes.data(), 1, MPI_INT, MPI_COMM_WORLD);
	for (unsigned r = 0; r < size_; r++)
		if (votes[r]) {
			broadcast_from(error, static_cast<int>(r));
			throw AgreedError(fmt::format("rank {}: {}", r, error));
		}
}

std::string Distributed::broadcast(const std::string& text) const {
	std::string out = text;
	if (size_ > 1) broadcast_from(out, 0);
	return out;
}

std::vector<uint64_t> Distributed::all_gather(const std::vector<uint64_t>& values) const {
	if (size_ == 1) return values;
	std::vector<uint64_t> out(values.size() * size_);
	MPI_Allgather(values.data(), static_cast<int>(values.size()), MPI_UINT64_T, out.data(),
	              static_cast<int>(values.size()), MPI_UINT64_T, MPI_COMM_WORLD);
	return out;
}

void Distributed::abort(int status) const {
	std::fflush(stderr);
	if (joined_) MPI_Abort(MPI_COMM_WORLD, status);
	std::exit(status);
}

#else // without MPI: always a job of one

Distributed::Distributed(Joined) {
	// Every process of an mpirun would then write the whole output, into the same folder.
	for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
		const char* size = std::getenv(name);
		if (size && std::strtoul(size, nullptr, 10) > 1)
			throw Error(fmt::format("started as one of {} MPI processes, but this weld was built without MPI "
			                        "(install libopenmpi-dev and configure again with -DWELD_MPI=ON)",
			                        size));
	}
}

Distributed::~Distributed() = default;

void Distributed::agree(const std::function<void()>& step) const {
	step();
}

std::string Distributed::broadcast(const std::string& text) const {
	return text;
}

std::vector<uint64_t> Distributed::all_gather(const std::vector<uint64_t>& values) const {
	return values;
}

void Distributed::abort(int status) const {
	std::fflush(stderr);
	std::exit(status);
}

#endif

Distributed Distributed::join() {
	return Distributed(Joined{});
}

} // namespace weld
