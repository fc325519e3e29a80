// libFuzzer target for the untrusted-input parsers: every input goes to both the safetensors
// header parser and the shard-index parser. weld::Error is the expected way to reject input;
// anything else (crash, sanitizer report, other exception) is a bug.
//
// Seeds: fuzz/seeds (regenerate with fuzz/make_seeds.py). Give libFuzzer a scratch corpus
// first so new inputs do not land in the committed seeds:
//   ./build-fuzz/fuzz_safetensors -max_total_time=30 /tmp/weld-corpus fuzz/seeds
#include "io/safetensors.h"
#include "util/error.h"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
	try {
		const auto header = weld::parse_safetensors(std::span<const uint8_t>(data, size), "fuzz.safetensors");
		// Validated offsets must lie inside the input.
		for (const auto& t : header.tensors)
			if (header.data_offset + t.data_end > size || t.nbytes() != t.numel() * weld::dtype_size(t.dtype))
				__builtin_trap();
	} catch (const weld::Error&) {
	}
	try {
		weld::parse_shard_index(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.index.json");
	} catch (const weld::Error&) {
	}
	return 0;
}
