// weld eval in a build without libtorch: the command exists and says what to install.
#include "test_util.h"

#include <gtest/gtest.h>

namespace weld {
namespace {

#ifndef WELD_HAVE_TORCH
TEST(EvalCommand, ExplainsABuildWithoutLibtorch) {
	std::string err;
	EXPECT_EQ(test::run_weld("eval some-model --data some.txt", &err), 1);
	EXPECT_NE(err.find("weld was built without libtorch"), std::string::npos) << err;
	EXPECT_NE(err.find("install libtorch-dev and rebuild"), std::string::npos) << err;
}
#endif

} // namespace
} // namespace weld
