// The documentation that is generated from code stays in step with it.
#include "test_util.h"

#include <gtest/gtest.h>

namespace weld {
namespace {

constexpr const char* kTableStart = "<!-- methods table: `weld methods --markdown` -->\n";
constexpr const char* kTableEnd = "<!-- end of methods table -->\n";

TEST(Docs, MethodsTableMatchesTheRegistry) {
	const auto doc = test::read_file(std::string(WELD_SOURCE_DIR) + "/docs/methods.md");
	const auto start = doc.find(kTableStart), end = doc.find(kTableEnd);
	ASSERT_NE(start, std::string::npos) << "docs/methods.md lacks the table start marker";
	ASSERT_NE(end, std::string::npos) << "docs/methods.md lacks the table end marker";
	const auto table =
	    doc.substr(start + std::string(kTableStart).size(), end - start - std::string(kTableStart).size());
	std::string generated;
	ASSERT_EQ(test::run_weld("methods --markdown", nullptr, &generated), 0);
	EXPECT_EQ(table, generated) << "regenerate with scripts/update-docs";
}

} // namespace
} // namespace weld
