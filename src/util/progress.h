// Progress of a long command on stderr: on a terminal one line rewritten in place (\r) a few
// times a second; otherwise (a log file, a pipe) a plain line each time another tenth of the
// work is done, and always a last line when it ends. Workers only add to atomic counters; a
// ticker thread prints, so the hot loops never wait on stderr.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace weld {

// Process-wide: --quiet silences every progress display that is made after this call.
void set_progress_quiet(bool quiet);
bool progress_quiet();

class Progress {
public:
	enum class Mode { Auto, Terminal, Lines, Silent }; // Auto: Terminal when stderr is one, else Lines

	// Shows "weld: <label>: done/total <unit> (P%)"; bytes_total > 0 adds a byte rate.
	Progress(std::string label, uint64_t total, std::string unit, uint64_t bytes_total = 0, Mode mode = Mode::Auto);
	~Progress(); // finish() when all the work was added, else abandon()
	Progress(const Progress&) = delete;
	Progress& operator=(const Progress&) = delete;

	// Thread-safe, lock-free.
	void add(uint64_t units, uint64_t bytes = 0) {
		done_.fetch_add(units, std::memory_order_relaxed);
		bytes_.fetch_add(bytes, std::memory_order_relaxed);
	}
	// Prints the last line (once) and stops the ticker. Call it before printing anything else.
	void finish();
	// Like finish, without the last line: for a command that failed.
	void abandon();

private:
	std::string label_, unit_;
	uint64_t total_, bytes_total_;
	Mode mode_;
	std::atomic<uint64_t> done_{0}, bytes_{0};
	std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
	int printed_tenths_ = 0; // Lines: the last tenth printed (none at 0%)
	std::mutex mutex_;
	std::condition_variable wake_;
	bool stopping_ = false, finished_ = false;
	std::thread ticker_;

	void tick();
	void print(bool last);
	void stop_ticker();
};

} // namespace weld
