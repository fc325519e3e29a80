// Outputs are built under a temporary name and renamed into place; what a killed run leaves
// behind is removed by the next run, but only when the process named in it is gone.
#include "io/output_folder.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {

// A process id that has just exited and been reaped.
long dead_pid() {
	const pid_t child = fork();
	if (child == 0) _exit(0);
	int status = 0;
	waitpid(child, &status, 0);
	return child;
}

fs::path make_leftover(const fs::path& dir, const std::string& name) {
	const auto path = dir / name;
	fs::create_directories(path);
	std::ofstream(path / "model-00001-of-00002.safetensors") << "partial";
	return path;
}

struct OutputFolderTest : ::testing::Test {
	fs::path dir = fs::temp_directory_path() / fmt::format("weld-output-folder-{}", getpid());
	void SetUp() override { fs::create_directories(dir); }
	void TearDown() override { fs::remove_all(dir); }
};

TEST_F(OutputFolderTest, LeftoversOfDeadProcessesAreRemovedByTheNextRun) {
	const long dead = dead_pid();
	const auto stale_tmp = make_leftover(dir, fmt::format(".merged.weld-tmp-{}", dead));
	const auto stale_other = make_leftover(dir, fmt::format(".another.weld-tmp-{}", dead));
	const auto stale_old = make_leftover(dir, fmt::format("merged.weld-old-{}", dead));
	// Process 1 always runs; a folder of a live process is somebody's merge in progress.
	const auto live = make_leftover(dir, ".merged.weld-tmp-1");
	// Names that only look similar are the user's, whatever their number.
	const auto user_folder = make_leftover(dir, fmt::format("merged.weld-tmp-{}", dead));
	const auto user_digits = make_leftover(dir, fmt::format(".merged.weld-tmp-{}x", dead));

	weld::OutputFolder out(dir / "merged", false);
	EXPECT_FALSE(fs::exists(stale_tmp));
	EXPECT_FALSE(fs::exists(stale_other));
	EXPECT_FALSE(fs::exists(stale_old));
	EXPECT_TRUE(fs::exists(live));
	EXPECT_TRUE(fs::exists(user_folder));
	EXPECT_TRUE(fs::exists(user_digits));
	EXPECT_TRUE(fs::is_directory(out.path()));
}

TEST_F(OutputFolderTest, OwnTemporaryFolderIsNeverTakenForStale) {
	weld::OutputFolder first(dir / "a", false);
	EXPECT_EQ(weld::remove_stale_outputs(dir), 0u);
	EXPECT_TRUE(fs::is_directory(first.path()));
}

TEST_F(OutputFolderTest, AKilledRunsFolderIsFoundAndTakenOverWithWhatItHolds) {
	const long dead = dead_pid();
	const auto stale = make_leftover(dir, fmt::format(".merged.weld-tmp-{}", dead));
	const auto other_output = make_leftover(dir, fmt::format(".merged2.weld-tmp-{}", dead));
	make_leftover(dir, ".merged.weld-tmp-1"); // a live process's
	make_leftover(dir, fmt::format(".merged.weld-tmp-x.weld-tmp-{}", dead));
	ASSERT_EQ(weld::stale_temporary_folders(dir / "merged"), std::vector<fs::path>{stale});

	weld::OutputFolder out(dir / "merged", false, stale);
	EXPECT_FALSE(fs::exists(stale));
	EXPECT_TRUE(fs::exists(out.path() / "model-00001-of-00002.safetensors"));
	EXPECT_FALSE(fs::exists(other_output)) << "the other stale folders are swept as before";
	out.publish();
	EXPECT_TRUE(fs::exists(dir / "merged" / "model-00001-of-00002.safetensors"));
}

} // namespace
