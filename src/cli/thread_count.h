// --threads beyond the machine's cores: more workers than cores only add per-thread buffers
// and contention (64 threads ran 3× slower than 2 here, 100000 exhausted memory), so the count
// is capped at the core count with one warning line.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <string_view>
#include <thread>

namespace weld::cli {

inline unsigned capped_thread_count(unsigned requested, std::string_view option = "--threads", bool quiet = false) {
	const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
	if (requested <= cores) return std::max(1u, requested);
	if (!quiet)
		fmt::print(stderr, "weld: warning: {} {} is more than this machine's {} cores: using {}\n", option, requested,
		           cores, cores);
	return cores;
}

} // namespace weld::cli
