// libFuzzer target for the GGUF header parser (io/gguf.h). weld::Error is the expected way to
// reject input; anything else (crash, sanitizer report, other exception, a tensor outside the
// input) is a bug.
//
// Seeds: fuzz/seeds-gguf (regenerate with fuzz/make_seeds.py):
//   ./build-fuzz/fuzz_gguf -max_total_time=30 /tmp/weld-gguf-corpus fuzz/seeds-gguf
#include "io/gguf.h"
#include "util/error.h"

#include <cstddef>
#include <cstdint>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
	try {
		const auto header = weld::parse_gguf(std::span<const uint8_t>(data, size), "fuzz.gguf");
		// Validated tensors must lie inside the input, aligned.
		for (const auto& t : header.tensors)
			if (header.data_offset + t.offset + t.nbytes > size || t.offset % header.alignment != 0 || t.dims.empty() ||
			    t.dims.size() > weld::kGgufMaxDims)
				__builtin_trap();
	} catch (const weld::Error&) {
	}
	return 0;
}
