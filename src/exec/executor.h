// Runs a plan's tensor jobs on a pool of threads and streams the results into safetensors
// shards; the bytes written do not depend on the thread count. Tensors whose method merges in
// blocks (MergeMethod::block_merge) stream one at a time, split across all threads, from the
// memory maps straight into the output: a few blocks per thread, plus the tensor's input pages
// while they fit the memory budget. The other jobs take whole float32 copies and run side by
// side while their buffers fit the budget (a job larger than the budget runs alone).
#pragma once

#include "io/tensor_sink.h"
#include "plan/plan.h"

#include <cstdint>
#include <filesystem>

namespace weld {

struct ExecOptions {
	unsigned threads = 1;
	uint64_t memory_budget = 1ull << 30;
	uint64_t max_shard_bytes = 5'000'000'000;
	bool progress = false;        // a progress line on stderr
	bool verbose = false;         // print methods' notes on how they computed each tensor
	bool allow_nonfinite = false; // merge NaN/Inf inputs instead of refusing them
	// Distributed merges: this process writes only the shards shard_ranks() gives `rank` of
	// `ranks` (and reads only their inputs); the shard index is then left to the caller.
	unsigned rank = 0, ranks = 1;
};

// Buffer bytes one job may need (sources and result in float32, method scratch, output).
uint64_t job_working_bytes(const TensorJob& job);

// Asks running merges to stop at the next tensor and fail with "interrupted" (so the partial
// output is removed). Async-signal-safe: meant for SIGINT/SIGTERM handlers.
void request_cancel();
// Lets merges run again after a cancelled one (a process that goes on: the Python module).
void clear_cancel();

struct ShardJournal;

// Writes the weights of `plan` into dir (which must exist). Throws weld::Error on failure;
// the first failure stops the other threads. With a journal (a single process only): the
// shards it lists are taken as complete on disk (the caller checked them) and not written
// again, and every shard completed here is fsync'd, hashed and added to it, the journal being
// rewritten in dir each time (io/shard_journal.h).
//
// For tests of killed merges, the environment variable WELD_TEST_KILL_AT makes the process
// SIGKILL itself: "shards:N" once N shards are journaled here (0: once the shard files are
// created), "writes:N" after N tensor writes (mid-shard).
void execute_plan(const Plan& plan, const std::filesystem::path& dir, const ExecOptions& options,
                  ShardJournal* journal = nullptr);
// The same into any sink (a GGUF file): tensor i of the plan is the sink's tensor i, written in
// the job's out_dtype.
void execute_plan(const Plan& plan, TensorSink& sink, const ExecOptions& options);

} // namespace weld
