#include "util/progress.h"

#include "util/size.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <unistd.h>

namespace weld {
namespace {

std::atomic<bool> g_quiet{false};
constexpr auto kTick = std::chrono::milliseconds(250); // at most four updates a second

std::string format_seconds(double s) {
	if (s < 60) return fmt::format("{:.0f}s", s);
	if (s < 3600) return fmt::format("{:.0f}m{:02.0f}s", std::floor(s / 60), std::fmod(s, 60));
	return fmt::format("{:.0f}h{:02.0f}m", std::floor(s / 3600), std::fmod(s / 60, 60));
}

} // namespace

void set_progress_quiet(bool quiet) {
	g_quiet = quiet;
}

bool progress_quiet() {
	return g_quiet;
}

Progress::Progress(std::string label, uint64_t total, std::string unit, uint64_t bytes_total, Mode mode)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), bytes_total_(bytes_total), mode_(mode) {
	if (g_quiet) mode_ = Mode::Silent;
	if (mode_ == Mode::Auto) mode_ = isatty(STDERR_FILENO) ? Mode::Terminal : Mode::Lines;
	if (mode_ != Mode::Silent) ticker_ = std::thread([this] { tick(); });
}

Progress::~Progress() {
	// Unfinished work is a failure on its way out: no closing line then.
	if (done_ >= total_)
		finish();
	else
		abandon();
}

void Progress::tick() {
	std::unique_lock lock(mutex_);
	while (!wake_.wait_for(lock, kTick, [&] { return stopping_; }))
		print(false);
}

void Progress::stop_ticker() {
	{
		std::lock_guard lock(mutex_);
		stopping_ = true;
	}
	wake_.notify_all();
	if (ticker_.joinable()) ticker_.join();
}

void Progress::finish() {
	if (finished_) return;
	stop_ticker();
	finished_ = true;
	if (mode_ != Mode::Silent) print(true);
}

void Progress::abandon() {
	if (finished_) return;
	stop_ticker();
	finished_ = true;
	if (mode_ == Mode::Terminal) std::fputs("\r\033[K", stderr);
}

void Progress::print(bool last) {
	const uint64_t done = std::min(done_.load(std::memory_order_relaxed), total_);
	const int tenths = total_ ? static_cast<int>(done * 10 / total_) : 10;
	if (mode_ == Mode::Lines && !last && tenths <= printed_tenths_) return; // a line per tenth
	printed_tenths_ = tenths;
	const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
	std::string line = fmt::format("weld: {}: {}/{} {} ({:.0f}%)", label_, done, total_, unit_,
	                               total_ ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0);
	if (bytes_total_ > 0 && seconds > 0)
		line += fmt::format(", {}/s", format_size(static_cast<uint64_t>(static_cast<double>(bytes_) / seconds)));
	if (last)
		line += fmt::format(" in {}", format_seconds(seconds));
	else if (done > 0)
		line += fmt::format(", ETA {}",
		                    format_seconds(seconds * static_cast<double>(total_ - done) / static_cast<double>(done)));
	if (mode_ == Mode::Terminal)
		std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), last ? "\n" : "");
	else
		std::fprintf(stderr, "%s\n", line.c_str());
	std::fflush(stderr);
}

} // namespace weld
