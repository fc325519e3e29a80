// weld verify-protect (libtorch): near zero for a model and its protected copy, large for two
// different models, so the command can tell them apart.
#include "test_util.h"

#include <gtest/gtest.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace weld {
namespace {

double verify(const test::TempDir& dir, const std::string& a, const std::string& b) {
	std::string out, err;
	const int status = test::run_weld(
	    fmt::format("verify-protect {} {} --json --sequences 3 --length 12", (dir / a).string(), (dir / b).string()),
	    &err, &out);
	EXPECT_EQ(status, 0) << err;
	return nlohmann::json::parse(out).at("max_logit_difference").get<double>();
}

TEST(VerifyProtect, NearZeroForTheProtectedCopyAndLargeForAnotherModel) {
	test::TempDir dir;
	TinyLlamaSpec spec;
	spec.hidden = 32;
	spec.heads = 4;
	spec.kv_heads = 2;
	write_tiny_llama(dir / "model", spec, make_tiny_llama(spec, 3));
	write_tiny_llama(dir / "other", spec, perturb(make_tiny_llama(spec, 3), 0.05f, 9));
	ASSERT_EQ(test::run_weld(
	              fmt::format("protect {} {} --seed 5 --quiet", (dir / "model").string(), (dir / "locked").string())),
	          0);
	const double protected_difference = verify(dir, "model", "locked");
	const double other_difference = verify(dir, "model", "other");
	std::printf("verify-protect: protected copy %.3g, a perturbed model %.3g\n", protected_difference,
	            other_difference);
	EXPECT_LE(protected_difference, 1e-4);
	EXPECT_GE(other_difference, 1e-2);
}

} // namespace
} // namespace weld
