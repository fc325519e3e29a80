#include "exec/executor.h"

#include "io/safetensors.h"
#include "tensor/convert.h"
#include "util/error.h"
#include "util/size.h"

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace weld {
namespace {

std::atomic<bool> g_cancelled{false};
static_assert(std::atomic<bool>::is_always_lock_free, "request_cancel must be async-signal-safe");

// Admits jobs while their working buffers fit the budget; one job is always admitted so a
// tensor larger than the budget still runs (alone).
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

class Progress {
public:
	Progress(size_t total_jobs, bool enabled) : total_(total_jobs), enabled_(enabled) {}

	void done(uint64_t bytes) {
		jobs_done_ += 1;
		bytes_done_ += bytes;
	}
	void print(bool final_line) {
		if (!enabled_) return;
		const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
		const size_t jobs = jobs_done_;
		const double rate = seconds > 0 ? static_cast<double>(bytes_done_) / seconds : 0;
		const double eta = jobs ? seconds * static_cast<double>(total_ - jobs) / static_cast<double>(jobs) : 0;
		std::fprintf(stderr, "\r\033[Kweld: %zu/%zu tensors  %s/s  ETA %.0fs%s", jobs, total_,
		             format_size(static_cast<uint64_t>(rate)).c_str(), eta, final_line ? "\n" : "");
		std::fflush(stderr);
	}

private:
	size_t total_;
	bool enabled_;
	std::atomic<size_t> jobs_done_{0};
	std::atomic<uint64_t> bytes_done_{0};
	std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

void run_job(const Plan& plan, size_t index, SafetensorsWriter& writer, const ExecOptions& options) {
	const TensorJob& job = plan.jobs[index];
	if (job.is_plain_copy(*plan.method)) {
		const auto& source = job.sources[0];
		writer.write(index, source.tensor->file->data(*source.tensor->info));
		return;
	}
	const size_t n = job.numel();
	std::vector<std::vector<float>> inputs(job.sources.size());
	MergeInput input;
	input.tensor_name = job.name;
	input.shape = job.shape;
	input.base_index = job.base_index;
	input.params = job.params;
	input.source_params = job.source_params;
	input.random_seed = plan.seed;
	for (size_t s = 0; s < job.sources.size(); s++) {
		const auto& source = job.sources[s];
		inputs[s].resize(n);
		const auto bytes = source.tensor->file->data(*source.tensor->info);
		convert_to_f32(source.tensor->info->dtype, bytes.data(), inputs[s].data(), n);
		input.sources.emplace_back(inputs[s]);
	}
	std::vector<std::string> notes;
	if (options.verbose) input.notes = &notes;
	std::vector<float> result(n);
	plan.method->merge(input, result);
	for (const auto& note : notes)
		std::fprintf(stderr, "%sweld: %s: %s\n", options.progress ? "\r\033[K" : "", job.name.c_str(), note.c_str());
	std::vector<uint8_t> out(job.out_nbytes());
	convert_from_f32(job.out_dtype, result.data(), out.data(), n);
	writer.write(index, out);
}

} // namespace

void request_cancel() {
	g_cancelled = true;
}

uint64_t job_working_bytes(const TensorJob& job) {
	// float32 copies of the sources and the result, plus as much again for the scratch buffers
	// of methods that sparsify each task vector (TIES, DARE), plus the output bytes.
	return 2 * (job.sources.size() + 1) * job.numel() * sizeof(float) + job.out_nbytes();
}

void execute_plan(const Plan& plan, const std::filesystem::path& dir, const ExecOptions& options) {
	std::vector<OutputTensorSpec> specs;
	for (const auto& job : plan.jobs)
		specs.push_back({job.name, job.out_dtype, job.shape});
	SafetensorsWriter writer(dir, std::move(specs), options.max_shard_bytes);

	MemoryBudget budget(options.memory_budget);
	Progress progress(plan.jobs.size(), options.progress);
	std::atomic<size_t> next{0};
	std::atomic<bool> failed{false};
	std::exception_ptr first_error;
	std::mutex error_mutex;

	auto worker = [&] {
		for (size_t i = next++; i < plan.jobs.size() && !failed; i = next++) {
			const uint64_t bytes = job_working_bytes(plan.jobs[i]);
			budget.acquire(bytes);
			try {
				if (g_cancelled) throw Error("interrupted");
				run_job(plan, i, writer, options);
				for (const auto& source : plan.jobs[i].sources)
					source.tensor->file->release(*source.tensor->info);
			} catch (...) {
				std::lock_guard lock(error_mutex);
				if (!first_error) first_error = std::current_exception();
				failed = true;
			}
			budget.release(bytes);
			progress.done(plan.jobs[i].out_nbytes());
		}
	};
	const unsigned threads = std::max(1u, options.threads);
	std::vector<std::thread> pool;
	for (unsigned t = 0; t < threads; t++)
		pool.emplace_back(worker);
	if (options.progress) {
		while (next < plan.jobs.size() && !failed) {
			progress.print(false);
			std::this_thread::sleep_for(std::chrono::milliseconds(250));
		}
	}
	for (auto& thread : pool)
		thread.join();
	if (first_error) std::rethrow_exception(first_error);
	progress.print(true);
	writer.finish();
}

} // namespace weld
