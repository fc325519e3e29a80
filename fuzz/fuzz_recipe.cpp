// libFuzzer target for recipe YAML (weld merge's input): parse_recipe must reject any input with
// weld::Error (yaml-cpp's own exceptions included, which parse_recipe turns into weld::Error);
// a crash, sanitizer report, hang or other exception is a bug.
//
// Seeds: the recipes in examples/ and fuzz/seeds-recipe. Give libFuzzer a scratch corpus first:
//   ./build-fuzz/fuzz_recipe -max_total_time=30 /tmp/weld-recipe-corpus fuzz/seeds-recipe
#include "plan/recipe.h"
#include "util/error.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
	try {
		weld::parse_recipe(std::string(reinterpret_cast<const char*>(data), size), "fuzz.yml");
	} catch (const weld::Error&) {
	}
	return 0;
}
