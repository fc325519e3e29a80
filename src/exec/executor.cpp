#include "exec/executor.h"

#include "io/safetensors.h"
#include "io/shard_journal.h"
#include "methods/method.h"
#include "tensor/convert.h"
#include "tensor/row_remap.h"
#include "util/error.h"
#include "util/memory_budget.h"
#include "util/progress.h"
#include "util/size.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <unistd.h>
#include <vector>

namespace weld {
namespace {

std::atomic<bool> g_cancelled{false};
static_assert(std::atomic<bool>::is_always_lock_free, "request_cancel must be async-signal-safe");

// NaN and ±Inf in an input are refused (ExecOptions::allow_nonfinite lets them through):
// every method would spread them, and most checkpoints that hold one are broken.
[[noreturn]] void throw_nonfinite(const Plan& plan, const JobSource& source, uint64_t element, float value) {
	throw Error(fmt::format("model {}: tensor '{}': element {} is {} (use --allow-nonfinite to merge it anyway)",
	                        plan.models[source.model].reference, source.tensor->info->name, element,
	                        nonfinite_name(value)));
}

void check_finite(const Plan& plan, const JobSource& source, std::span<const float> values, uint64_t offset) {
	const size_t at = first_nonfinite(values.data(), values.size());
	if (at < values.size()) throw_nonfinite(plan, source, offset + at, values[at]);
}

void check_finite_stored(const Plan& plan, const JobSource& source) {
	const TensorInfo& info = *source.tensor->info;
	const uint8_t* data = source.tensor->file->data(info).data();
	const size_t at = first_nonfinite(info.dtype, data, info.numel());
	if (at == info.numel()) return;
	float value = 0;
	convert_to_f32(info.dtype, data + at * dtype_size(info.dtype), &value, 1);
	throw_nonfinite(plan, source, at, value);
}

// A whole-tensor job: float32 copies of every source, merged at once.
// --verbose: the method's notes on how it computed this tensor, one line each.
void print_notes(const TensorJob& job, const std::vector<std::string>& notes, const ExecOptions& options) {
	for (const auto& note : notes)
		std::fprintf(stderr, "%sweld: %s: %s\n", options.progress && isatty(STDERR_FILENO) ? "\r\033[K" : "",
		             job.name.c_str(), note.c_str());
}

void run_job(const Plan& plan, size_t index, TensorSink& writer, const ExecOptions& options) {
	const TensorJob& job = plan.jobs[index];
	if (job.is_plain_copy(*plan.method)) {
		const auto& source = job.sources[0];
		if (!options.allow_nonfinite) check_finite_stored(plan, source);
		writer.write(index, source.tensor->file->data(*source.tensor->info));
		return;
	}
	const size_t n = job.numel();
	// The conversion overwrites every element: no zero fill first (it took longer than the
	// conversion itself for the SVD methods' whole-tensor jobs).
	std::vector<std::unique_ptr<float[]>> inputs(job.sources.size());
	std::vector<std::vector<float>> remapped;
	MergeInput input = job_input(plan, job);
	for (size_t s = 0; s < job.sources.size(); s++) {
		const auto& source = job.sources[s];
		const uint64_t count = job.rows ? source.tensor->info->numel() : n; // all rows, to be rearranged
		inputs[s] = std::make_unique_for_overwrite<float[]>(count);
		const auto bytes = source.tensor->file->data(*source.tensor->info);
		convert_to_f32(source.tensor->info->dtype, bytes.data(), inputs[s].get(), count);
		if (!options.allow_nonfinite) check_finite(plan, source, {inputs[s].get(), count}, 0);
		if (job.rows) { // a rare path (vocabulary surgery): rearranged below from whole vectors
			remapped.emplace_back(inputs[s].get(), inputs[s].get() + count);
			inputs[s].reset();
		}
	}
	if (job.rows) remapped = remap_rows(*job.rows, remapped, job.shape[1]);
	for (size_t s = 0; s < job.sources.size(); s++)
		input.sources.push_back(job.rows ? std::span<const float>(remapped[s])
		                                 : std::span<const float>(inputs[s].get(), n));
	std::vector<std::vector<float>> statistics(job.sources.size());
	if (!plan.method->info().statistics.empty()) {
		for (size_t s = 0; s < job.sources.size(); s++) {
			if (const auto* stats = job.sources[s].statistics) {
				statistics[s].resize(stats->info->numel());
				convert_to_f32(stats->info->dtype, stats->file->data(*stats->info).data(), statistics[s].data(),
				               statistics[s].size());
				stats->file->release(*stats->info);
			}
			input.statistics.emplace_back(statistics[s]);
			const auto model = job.sources[s].model;
			input.statistics_kinds.emplace_back(model < plan.statistics_kinds.size() ? plan.statistics_kinds[model]
			                                                                         : std::string_view());
		}
	}
	std::vector<std::string> notes;
	if (options.verbose) input.notes = &notes;
	std::vector<float> result(n);
	plan.method->merge(input, result);
	print_notes(job, notes, options);
	const size_t out_bytes = job.out_nbytes();
	const auto out = std::make_unique_for_overwrite<uint8_t[]>(out_bytes);
	convert_from_f32(job.out_dtype, result.data(), out.get(), n);
	writer.write(index, {out.get(), out_bytes});
}

// Runs fn(item, worker) for every item in [0, items) on `threads` threads, the caller being
// worker 0. After the first exception no more items start; it is rethrown here.
void parallel_for(uint64_t items, unsigned threads, const std::function<void(uint64_t, unsigned)>& fn) {
	std::atomic<uint64_t> next{0};
	std::atomic<bool> failed{false};
	std::exception_ptr error;
	std::mutex error_mutex;
	auto work = [&](unsigned worker) {
		for (uint64_t item = next++; item < items && !failed; item = next++) {
			try {
				fn(item, worker);
			} catch (...) {
				std::lock_guard lock(error_mutex);
				if (!error) error = std::current_exception();
				failed = true;
			}
		}
	};
	const auto helpers = static_cast<unsigned>(std::min<uint64_t>(threads, items)) - (items > 0 ? 1 : 0);
	std::vector<std::thread> pool;
	for (unsigned t = 1; t <= helpers; t++)
		pool.emplace_back(work, t);
	work(0);
	for (auto& thread : pool)
		thread.join();
	if (error) std::rethrow_exception(error);
}

// Blocks per work item of a streamed tensor: 1M elements, so each item's output is one large
// write and the items of a large tensor spread over all threads.
constexpr uint64_t kItemBlocks = 64;

struct WorkerBuffers {
	std::vector<std::vector<float>> sources; // one block of each source, as float32
	std::vector<std::span<const float>> views;
	std::vector<float> out;      // one block of output
	std::vector<uint8_t> staged; // one item of output, converted
};

// A tensor merged in blocks straight from the memory maps: each statistics pass and the output
// pass run over the tensor's items on every thread. Inputs that fit the memory budget are mapped
// once, up front, and stay mapped through the passes; larger ones are released item by item as
// read (and fault in again in the next pass), so memory stays within the budget plus a few
// blocks per thread whatever the tensor size.
// What one streaming worker holds: a block of every source and of the output in float32, and
// one item of converted output.
uint64_t worker_buffer_bytes(const TensorJob& job) {
	return (job.sources.size() + 1) * kBlockElements * sizeof(float) +
	       kItemBlocks * kBlockElements * dtype_size(job.out_dtype);
}

// What the method holds for the tensor (MergeMethod::working_bytes).
uint64_t method_bytes(const Plan& plan, const TensorJob& job) {
	return plan.method->working_bytes(job_input(plan, job), job.sources.size(), job.numel());
}

// The workers' buffers come out of the memory budget left beside the method's own bytes: as many
// threads as it holds, at least one.
unsigned streaming_threads(const TensorJob& job, const ExecOptions& options, uint64_t held_by_method) {
	const uint64_t requested = std::max(1u, options.threads);
	const uint64_t left = options.memory_budget > held_by_method ? options.memory_budget - held_by_method : 0;
	const uint64_t held = std::max<uint64_t>(1, left / worker_buffer_bytes(job));
	static std::atomic<bool> warned{false};
	if (held < requested && !warned.exchange(true)) {
		// Name what else the budget holds when the method's own matrices take most of it.
		const std::string beside = held_by_method == 0 ? std::string()
		                                               : fmt::format(" beside the {} the method holds for '{}'",
		                                                             format_size(held_by_method), job.name);
		fmt::print(stderr,
		           "weld: warning: --memory-budget {} holds the streaming buffers of {} thread{}, not {}{}: "
		           "streaming on {}\n",
		           format_size(options.memory_budget), held, held == 1 ? "" : "s", requested, beside, held);
	}
	return static_cast<unsigned>(std::min(requested, held));
}

void stream_job(const Plan& plan, size_t index, BlockMerge& kernel, TensorSink& writer, const ExecOptions& options,
                std::vector<WorkerBuffers>& buffers) {
	const TensorJob& job = plan.jobs[index];
	const uint64_t held_by_method = method_bytes(plan, job);
	const unsigned threads = streaming_threads(job, options, held_by_method);
	uint64_t input_bytes = 0;
	for (const auto& source : job.sources)
		input_bytes += source.tensor->info->nbytes();
	const bool stay_mapped = input_bytes + threads * worker_buffer_bytes(job) + held_by_method <= options.memory_budget;
	if (stay_mapped)
		for (const auto& source : job.sources)
			source.tensor->file->prefetch(*source.tensor->info, true);
	const uint64_t n = job.numel(), blocks = block_count(n);
	const uint64_t items = (blocks + kItemBlocks - 1) / kItemBlocks;
	const size_t out_size = dtype_size(job.out_dtype);
	for (unsigned worker = 0; worker < threads; worker++) {
		WorkerBuffers& b = buffers[worker];
		b.sources.resize(job.sources.size(), std::vector<float>(kBlockElements));
		b.views.resize(job.sources.size());
		b.out.resize(kBlockElements);
		b.staged.resize(std::max(b.staged.size(), kItemBlocks * kBlockElements * out_size));
	}
	// Inputs are checked for NaN/Inf in the first pass that reads them, not again in later ones.
	int first_pass = -1;
	for (int pass = kernel.stat_passes() - 1; pass >= 0; pass--)
		if (kernel.wants_pass(pass)) first_pass = pass;
	auto run_pass = [&](int pass) { // pass < 0: the output pass
		const bool check_inputs = !options.allow_nonfinite && pass == first_pass;
		parallel_for(items, threads, [&](uint64_t item, unsigned worker) {
			try {
				if (g_cancelled) throw Error("interrupted");
				WorkerBuffers& wb = buffers[worker];
				const uint64_t first = item * kItemBlocks * kBlockElements;
				const uint64_t end = std::min(n, first + kItemBlocks * kBlockElements);
				for (uint64_t offset = first; offset < end; offset += kBlockElements) {
					const uint64_t size = std::min(kBlockElements, end - offset);
					for (size_t s = 0; s < job.sources.size(); s++) {
						const TensorInfo& info = *job.sources[s].tensor->info;
						const uint8_t* data = job.sources[s].tensor->file->data(info).data();
						convert_to_f32(info.dtype, data + offset * dtype_size(info.dtype), wb.sources[s].data(), size);
						wb.views[s] = {wb.sources[s].data(), size};
						if (check_inputs) check_finite(plan, job.sources[s], wb.views[s], offset);
					}
					const Block block{.index = offset / kBlockElements, .offset = offset, .sources = wb.views};
					if (pass >= 0) {
						kernel.observe(pass, block, worker);
						continue;
					}
					kernel.merge(block, {wb.out.data(), size}, worker);
					convert_from_f32(job.out_dtype, wb.out.data(), wb.staged.data() + (offset - first) * out_size,
					                 size);
				}
				for (const auto& source : job.sources) {
					if (stay_mapped) break;
					const uint64_t element = dtype_size(source.tensor->info->dtype);
					source.tensor->file->release_range(*source.tensor->info, first * element, (end - first) * element);
				}
				if (pass < 0) writer.write_range(index, first * out_size, {wb.staged.data(), (end - first) * out_size});
			} catch (...) {
				kernel.abandon(); // a method waiting for this item's blocks stops waiting
				throw;
			}
		});
	};
	for (int pass = 0; pass < kernel.stat_passes(); pass++) {
		if (!kernel.wants_pass(pass)) continue;
		run_pass(pass);
		kernel.end_pass(pass);
	}
	if (n == 0)
		writer.write(index, {});
	else
		run_pass(-1);
	if (options.verbose) print_notes(job, kernel.notes(), options);
	for (const auto& source : job.sources)
		source.tensor->file->release(*source.tensor->info);
}

// WELD_TEST_KILL_AT (see execute_plan): when a test wants this process killed.
struct KillPoint {
	std::optional<uint64_t> after_shards, after_writes;
};

KillPoint test_kill_point() {
	KillPoint point;
	const char* value = std::getenv("WELD_TEST_KILL_AT");
	if (!value) return point;
	const std::string_view text(value);
	const auto number = [&](std::string_view prefix) -> std::optional<uint64_t> {
		if (!text.starts_with(prefix)) return std::nullopt;
		uint64_t n = 0;
		const auto digits = text.substr(prefix.size());
		const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
		if (error != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
		return n;
	};
	point.after_shards = number("shards:");
	point.after_writes = number("writes:");
	return point;
}

[[noreturn]] void kill_self() {
	std::raise(SIGKILL);
	std::abort(); // not reached
}

// Makes each completed shard durable (fsync), hashes it and adds it to the journal, on a thread
// of its own so that the merge goes on meanwhile. finish() waits for them all.
class JournalKeeper {
public:
	JournalKeeper(std::filesystem::path dir, std::vector<std::string> names, ShardJournal& journal,
	              std::optional<uint64_t> kill_after)
	    : dir_(std::move(dir)), names_(std::move(names)), journal_(journal), kill_after_(kill_after) {
		thread_ = std::thread([this] { run(); });
	}
	~JournalKeeper() { stop(false); }
	JournalKeeper(const JournalKeeper&) = delete;
	JournalKeeper& operator=(const JournalKeeper&) = delete;

	// Takes over the shard's file descriptor.
	void add(size_t shard, int fd) {
		std::lock_guard lock(mutex_);
		queue_.emplace_back(shard, fd);
		wake_.notify_one();
	}
	// Waits until every added shard is journaled; rethrows the first failure.
	void finish() {
		stop(true);
		if (error_) std::rethrow_exception(error_);
	}

private:
	std::filesystem::path dir_;
	std::vector<std::string> names_;
	ShardJournal& journal_;
	std::optional<uint64_t> kill_after_;
	std::mutex mutex_;
	std::condition_variable wake_;
	std::deque<std::pair<size_t, int>> queue_;
	bool stopping_ = false, keep_going_ = true;
	std::exception_ptr error_;
	uint64_t journaled_ = 0;
	std::thread thread_;

	void stop(bool complete) {
		{
			std::lock_guard lock(mutex_);
			stopping_ = true;
			keep_going_ = keep_going_ && complete;
			wake_.notify_one();
		}
		if (thread_.joinable()) thread_.join();
	}

	void run() {
		for (;;) {
			std::pair<size_t, int> item;
			bool work = false;
			{
				std::unique_lock lock(mutex_);
				wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
				if (queue_.empty()) return;
				item = queue_.front();
				queue_.pop_front();
				work = keep_going_ && !error_;
			}
			if (!work) {
				::close(item.second);
				continue;
			}
			try {
				journal(item.first, item.second);
			} catch (...) {
				std::lock_guard lock(mutex_);
				if (!error_) error_ = std::current_exception();
			}
		}
	}

	void journal(size_t k, int fd) {
		const auto path = dir_ / names_[k];
		const bool synced = ::fsync(fd) == 0;
		const int sync_error = errno;
		if (::close(fd) != 0 && synced)
			throw Error(fmt::format("{}: closing shard failed: {}", path.string(), std::strerror(errno)));
		if (!synced) throw Error(fmt::format("{}: cannot sync: {}", path.string(), std::strerror(sync_error)));
		journal_.shards.push_back({names_[k], std::filesystem::file_size(path), sha256_hex_of_file(path)});
		write_shard_journal(dir_, journal_);
		if (kill_after_ && ++journaled_ == *kill_after_) kill_self();
	}
};

// The safetensors shards as a TensorSink.
class SafetensorsSink : public TensorSink {
public:
	SafetensorsSink(SafetensorsWriter& writer, std::optional<uint64_t> kill_after_writes = {})
	    : writer_(writer), kill_after_writes_(kill_after_writes) {}
	bool owns(size_t tensor_index) const override { return writer_.owns(tensor_index); }
	void write(size_t tensor_index, std::span<const uint8_t> bytes) override {
		writer_.write(tensor_index, bytes);
		count_write();
	}
	void write_range(size_t tensor_index, uint64_t byte_offset, std::span<const uint8_t> bytes,
	                 bool whole = false) override {
		writer_.write_range(tensor_index, byte_offset, bytes, whole);
		count_write();
	}
	void finish() override { writer_.finish(); }

private:
	SafetensorsWriter& writer_;
	std::optional<uint64_t> kill_after_writes_;
	std::atomic<uint64_t> writes_{0};

	void count_write() {
		if (kill_after_writes_ && ++writes_ == *kill_after_writes_) kill_self();
	}
};

} // namespace

void request_cancel() {
	g_cancelled = true;
}

void clear_cancel() {
	g_cancelled = false;
}

uint64_t job_working_bytes(const TensorJob& job) {
	// float32 copies of the sources and the result, plus as much again for the scratch buffers
	// of methods that sparsify each task vector (TIES, DARE), plus the output bytes.
	uint64_t statistics = 0;
	for (const auto& source : job.sources)
		if (source.statistics) statistics += source.statistics->info->numel() * sizeof(float);
	uint64_t rearranged = 0; // the sources' own rows, before they become the output vocabulary's
	for (const auto& source : job.sources)
		if (job.rows) rearranged += source.tensor->info->numel() * sizeof(float);
	return 2 * (job.sources.size() + 1) * job.numel() * sizeof(float) + statistics + rearranged + job.out_nbytes();
}

namespace {

// Whole-tensor jobs, one per thread, admitted while their buffers fit the memory budget.
void run_whole_tensor_jobs(const Plan& plan, const std::vector<size_t>& jobs, TensorSink& writer,
                           const ExecOptions& options, Progress& progress) {
	MemoryBudget budget(options.memory_budget);
	parallel_for(jobs.size(), std::max(1u, options.threads), [&](uint64_t k, unsigned) {
		const size_t i = jobs[k];
		const uint64_t bytes = job_working_bytes(plan.jobs[i]) + method_bytes(plan, plan.jobs[i]);
		budget.acquire(bytes);
		try {
			if (g_cancelled) throw Error("interrupted");
			run_job(plan, i, writer, options);
			for (const auto& source : plan.jobs[i].sources)
				source.tensor->file->release(*source.tensor->info);
		} catch (...) {
			budget.release(bytes);
			throw;
		}
		budget.release(bytes);
		progress.add(1, plan.jobs[i].out_nbytes());
	});
}

} // namespace

void execute_plan(const Plan& plan, const std::filesystem::path& dir, const ExecOptions& options,
                  ShardJournal* journal) {
	std::vector<OutputTensorSpec> specs;
	for (const auto& job : plan.jobs)
		specs.push_back({job.name, job.out_dtype, job.shape});
	const KillPoint kill = test_kill_point();
	WriterResume resume;
	std::optional<JournalKeeper> keeper;
	if (journal) {
		if (options.ranks > 1) throw Error("a shard journal is kept by a single process only");
		std::vector<std::string> names; // per shard
		for (const auto& shard : plan_output_layout(specs, options.max_shard_bytes).shards)
			names.push_back(shard.file_name);
		resume.done.assign(names.size(), false);
		for (const auto& record : journal->shards)
			for (size_t k = 0; k < names.size(); k++)
				if (names[k] == record.file) resume.done[k] = true;
		write_shard_journal(dir, *journal);
		const auto left = static_cast<size_t>(std::count(resume.done.begin(), resume.done.end(), false));
		keeper.emplace(dir, std::move(names), *journal, kill.after_shards);
		// The shard that completes last ends the merge: a kill before the output is renamed into
		// place writes it again. Not journaling it keeps its fsync and hash off the merge's end
		// (a model of one shard: no journal cost at all).
		resume.on_complete = [&keeper, unjournaled = std::make_shared<std::atomic<size_t>>(left)](size_t k, int fd) {
			if (unjournaled->fetch_sub(1) == 1)
				::close(fd);
			else
				keeper->add(k, fd);
		};
	}
	SafetensorsWriter writer(dir, std::move(specs), options.max_shard_bytes, {options.rank, options.ranks}, {},
	                         std::move(resume));
	if (kill.after_shards == 0u) kill_self();
	SafetensorsSink sink(writer, kill.after_writes);
	execute_plan(plan, sink, options);
	if (keeper) keeper->finish();
}

void execute_plan(const Plan& plan, TensorSink& writer, const ExecOptions& options) {
	const unsigned threads = std::max(1u, options.threads);
	std::vector<size_t> own_jobs; // all of them, except in a distributed merge
	for (size_t i = 0; i < plan.jobs.size(); i++)
		if (writer.owns(i)) own_jobs.push_back(i);
	uint64_t own_bytes = 0;
	for (size_t i : own_jobs)
		own_bytes += plan.jobs[i].out_nbytes();
	Progress progress("merge", own_jobs.size(), "tensors", own_bytes,
	                  options.progress ? Progress::Mode::Auto : Progress::Mode::Silent);
	try {
		// Tensors a method can merge in blocks stream one after another, each on every thread;
		// the others then run side by side, one per thread, under the memory budget.
		std::vector<size_t> whole_tensor_jobs;
		std::vector<WorkerBuffers> buffers(threads);
		for (size_t k = 0; k < own_jobs.size(); k++) {
			const size_t i = own_jobs[k];
			const TensorJob& job = plan.jobs[i];
			auto kernel =
			    job.is_plain_copy(*plan.method) || job.rows // rearranged rows need whole tensors
			        ? nullptr
			        : plan.method->block_merge(job_input(plan, job), job.sources.size(), job.numel(), threads);
			if (!kernel) {
				whole_tensor_jobs.push_back(i);
				continue;
			}
			if (k + 1 < own_jobs.size())
				for (const auto& source : plan.jobs[own_jobs[k + 1]].sources)
					source.tensor->file->prefetch(*source.tensor->info);
			stream_job(plan, i, *kernel, writer, options, buffers);
			progress.add(1, job.out_nbytes());
		}
		buffers.clear();
		run_whole_tensor_jobs(plan, whole_tensor_jobs, writer, options, progress);
	} catch (...) {
		progress.abandon();
		throw;
	}
	progress.finish();
	writer.finish();
}

} // namespace weld
