// weld merge --resume: a merge killed at any point (SIGKILL, through the WELD_TEST_KILL_AT hook
// of exec/executor.h) continues from the shards its journal lists and ends with the bytes of an
// uninterrupted run; a damaged shard is written again; another recipe is refused. And a full
// disk fails with the file named, leaving an existing output as it was.
#include "io/shard_journal.h"
#include "test_util.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <map>

namespace weld {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

struct Child {
	int exit_code = -1; // when it exited
	int signal = 0;     // when a signal ended it
	std::string err;
};

// Runs the weld binary with `args`; kill_at sets WELD_TEST_KILL_AT, max_file_bytes limits the
// size of every file it writes (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG).
Child run_child(const std::vector<std::string>& args, const std::string& kill_at = "",
                rlim_t max_file_bytes = RLIM_INFINITY) {
	TempDir capture;
	const auto err_path = capture / "err.txt";
	const pid_t pid = fork();
	if (pid == 0) {
		if (kill_at.empty())
			unsetenv("WELD_TEST_KILL_AT");
		else
			setenv("WELD_TEST_KILL_AT", kill_at.c_str(), 1);
		if (max_file_bytes != RLIM_INFINITY) {
			std::signal(SIGXFSZ, SIG_IGN);
			const rlimit limit{max_file_bytes, max_file_bytes};
			if (setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(126);
		}
		const int null = open("/dev/null", O_WRONLY);
		const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(null, STDOUT_FILENO);
		dup2(err, STDERR_FILENO);
		std::vector<char*> argv{const_cast<char*>(WELD_BINARY)};
		for (const auto& a : args)
			argv.push_back(const_cast<char*>(a.c_str()));
		argv.push_back(nullptr);
		execv(WELD_BINARY, argv.data());
		_exit(127);
	}
	int status = 0;
	waitpid(pid, &status, 0);
	Child child;
	if (WIFEXITED(status)) child.exit_code = WEXITSTATUS(status);
	if (WIFSIGNALED(status)) child.signal = WTERMSIG(status);
	child.err = test::read_file(err_path);
	return child;
}

// Every file of a folder, by name.
std::map<std::string, std::string> folder_files(const fs::path& dir) {
	std::map<std::string, std::string> files;
	for (const auto& entry : fs::directory_iterator(dir))
		files[entry.path().filename().string()] = test::read_file(entry.path());
	return files;
}

// The temporary folders of merges in `dir`.
std::vector<fs::path> temporary_folders(const fs::path& dir) {
	std::vector<fs::path> found;
	for (const auto& entry : fs::directory_iterator(dir))
		if (entry.path().filename().string().find(".weld-tmp-") != std::string::npos) found.push_back(entry.path());
	return found;
}

class ResumeTest : public ::testing::Test {
protected:
	void SetUp() override {
		spec_.layers = 4;
		const auto base = make_tiny_llama(spec_, 1);
		write_tiny_llama(dir_ / "base", spec_, base);
		write_tiny_llama(dir_ / "a", spec_, perturb(base, 0.1f, 2), 20000);
		write_tiny_llama(dir_ / "b", spec_, perturb(base, 0.1f, 3));
		test::write_file(recipe_, recipe(0.5));
	}

	std::string recipe(double weight) const {
		return fmt::format("merge_method: ties\nbase_model: {}\nparameters: {{density: 0.5}}\nmodels:\n"
		                   "  - model: {}\n    parameters: {{weight: {}}}\n  - model: {}\n"
		                   "    parameters: {{weight: 0.7}}\n",
		                   (dir_ / "base").string(), (dir_ / "a").string(), weight, (dir_ / "b").string());
	}

	std::vector<std::string> merge_args(const fs::path& out, const fs::path& recipe_path) const {
		return {"merge", recipe_path.string(), out.string(), "--out-shard-size", "10KB", "--threads", "2", "--quiet"};
	}
	std::vector<std::string> merge_args(const fs::path& out) const { return merge_args(out, recipe_); }

	// The output of an uninterrupted merge.
	const std::map<std::string, std::string>& reference() {
		if (reference_.empty()) {
			const auto child = run_child(merge_args(dir_ / "reference"));
			EXPECT_EQ(child.exit_code, 0) << child.err;
			reference_ = folder_files(dir_ / "reference");
			size_t shards = 0;
			for (const auto& [name, bytes] : reference_)
				shards += name.ends_with(".safetensors");
			EXPECT_GE(shards, 4u) << "the test wants several shards";
		}
		return reference_;
	}

	// Kills a merge into `out` at `kill_at`; returns the temporary folder it left.
	fs::path killed_merge(const fs::path& out, const std::string& kill_at) {
		const auto child = run_child(merge_args(out), kill_at);
		EXPECT_EQ(child.signal, SIGKILL) << kill_at << ": " << child.err;
		EXPECT_FALSE(fs::exists(out));
		const auto left = temporary_folders(out.parent_path());
		EXPECT_EQ(left.size(), 1u);
		return left.empty() ? fs::path() : left.front();
	}

	// --resume; expects success, the reference's bytes and nothing left behind. Returns stderr.
	std::string resume_and_compare(const fs::path& out, bool quiet = true) {
		auto args = merge_args(out);
		if (!quiet) args.pop_back();
		args.push_back("--resume");
		const auto child = run_child(args);
		EXPECT_EQ(child.exit_code, 0) << child.err;
		EXPECT_EQ(folder_files(out), reference()) << out;
		EXPECT_TRUE(temporary_folders(dir_.path()).empty());
		return child.err;
	}

	TempDir dir_;
	TinyLlamaSpec spec_;
	fs::path recipe_ = dir_ / "recipe.yml";
	std::map<std::string, std::string> reference_;
};

TEST_F(ResumeTest, KilledAtAnyPointResumesToTheBytesOfAnUninterruptedRun) {
	reference();
	for (const std::string kill_at : {"shards:0", "shards:1", "shards:2", "writes:3", "writes:9"}) {
		SCOPED_TRACE(kill_at);
		const auto out = dir_ / ("out-" + kill_at.substr(0, kill_at.find(':')) + kill_at.substr(kill_at.find(':') + 1));
		const auto left = killed_merge(out, kill_at);
		const auto journal = read_shard_journal(left);
		ASSERT_TRUE(journal.has_value()) << "the journal is written before any shard";
		if (kill_at.starts_with("shards:")) {
			EXPECT_GE(journal->shards.size(), std::stoul(kill_at.substr(7)));
		}
		resume_and_compare(out);
	}
}

TEST_F(ResumeTest, KeptShardsAreReportedAndNotWrittenAgain) {
	const auto out = dir_ / "out";
	const auto left = killed_merge(out, "shards:2");
	const auto journal = read_shard_journal(left);
	ASSERT_TRUE(journal && journal->shards.size() >= 2);
	const auto first = journal->shards.front().file;
	const auto links_before = fs::hard_link_count(left / first); // the file is kept, not rewritten:
	fs::create_hard_link(left / first, dir_ / "witness");        // a new file would break the link
	auto args = merge_args(out);
	args.back() = "--resume"; // not quiet: the summary line says what was kept
	const auto child = run_child(args);
	ASSERT_EQ(child.exit_code, 0) << child.err;
	EXPECT_EQ(folder_files(out), reference());
	EXPECT_EQ(fs::hard_link_count(out / first), links_before + 1);
	EXPECT_EQ(test::read_file(dir_ / "witness"), test::read_file(out / first));
	EXPECT_FALSE(fs::exists(out / kShardJournalFile));
}

TEST_F(ResumeTest, ADamagedShardIsFoundAndWrittenAgain) {
	const auto out = dir_ / "out";
	const auto left = killed_merge(out, "shards:2");
	const auto journal = read_shard_journal(left);
	ASSERT_TRUE(journal && journal->shards.size() >= 2);
	const auto damaged = left / journal->shards[1].file;
	{
		std::fstream f(damaged, std::ios::in | std::ios::out | std::ios::binary);
		f.seekp(static_cast<std::streamoff>(fs::file_size(damaged) - 3));
		f.put('\x7f');
	}
	const auto missing = left / journal->shards[0].file;
	fs::remove(missing);
	const auto err = resume_and_compare(out, false); // the warnings say which shards are written again
	EXPECT_NE(err.find(journal->shards[1].file + " has changed since it was written (SHA-256); writing it again"),
	          std::string::npos)
	    << err;
	EXPECT_NE(err.find(journal->shards[0].file + " is missing; writing it again"), std::string::npos) << err;
}

TEST_F(ResumeTest, AnotherRecipeOrSeedIsOneClearErrorAndKeepsTheInterruptedMerge) {
	const auto out = dir_ / "out";
	const auto left = killed_merge(out, "shards:1");
	const auto other = dir_ / "other.yml";
	test::write_file(other, recipe(0.25));
	auto args = merge_args(out, other);
	args.push_back("--resume");
	auto child = run_child(args);
	EXPECT_EQ(child.exit_code, 1);
	EXPECT_EQ(std::count(child.err.begin(), child.err.end(), '\n'), 1) << child.err;
	EXPECT_EQ(child.err.rfind("weld: error: ", 0), 0u) << child.err;
	EXPECT_NE(child.err.find("--resume: the interrupted merge in " + left.string() +
	                         " was made with a different recipe; run without --resume to start over"),
	          std::string::npos)
	    << child.err;
	EXPECT_TRUE(fs::is_directory(left)) << "a refused resume keeps what it would resume";

	args = merge_args(out);
	args.insert(args.end(), {"--seed", "7", "--resume"});
	child = run_child(args);
	EXPECT_EQ(child.exit_code, 1);
	EXPECT_NE(child.err.find("different options (seed=0 out_shard_size=10000 allow_nonfinite=0 then, seed=7 "
	                         "out_shard_size=10000 allow_nonfinite=0 now)"),
	          std::string::npos)
	    << child.err;
	resume_and_compare(out); // the right recipe still resumes it
}

TEST_F(ResumeTest, NothingToResumeIsAnError) {
	auto args = merge_args(dir_ / "out");
	args.push_back("--resume");
	const auto child = run_child(args);
	EXPECT_EQ(child.exit_code, 1);
	EXPECT_NE(child.err.find("--resume: no interrupted merge to continue"), std::string::npos) << child.err;
	EXPECT_FALSE(fs::exists(dir_ / "out"));
}

TEST_F(ResumeTest, WithoutResumeAKilledRunsFolderIsRemoved) {
	const auto out = dir_ / "out";
	killed_merge(out, "shards:1");
	const auto child = run_child(merge_args(out));
	EXPECT_EQ(child.exit_code, 0) << child.err;
	EXPECT_EQ(folder_files(out), reference());
	EXPECT_TRUE(temporary_folders(dir_.path()).empty());
}

// A full disk as a file size limit: the shard files cannot grow to their size (EFBIG).
TEST_F(ResumeTest, AFileSizeLimitFailsNamingTheFileAndKeepsTheExistingOutput) {
	const auto out = dir_ / "out";
	ASSERT_EQ(run_child(merge_args(out)).exit_code, 0);
	const auto before = folder_files(out);
	test::write_file(recipe_, recipe(0.25));
	auto args = merge_args(out);
	args.push_back("--force");
	const auto child = run_child(args, "", 4096);
	EXPECT_EQ(child.exit_code, 1) << child.err;
	EXPECT_EQ(std::count(child.err.begin(), child.err.end(), '\n'), 1) << child.err;
	EXPECT_NE(child.err.find(".safetensors: cannot size to "), std::string::npos) << child.err;
	EXPECT_NE(child.err.find("File too large"), std::string::npos) << child.err;
	EXPECT_EQ(folder_files(out), before);
	EXPECT_TRUE(temporary_folders(dir_.path()).empty());
}

// A full disk for real: a 20 MB tmpfs (needs the right to mount; skipped without it) that holds
// one output but not a second beside it, so writing the new shards fails with ENOSPC.
TEST_F(ResumeTest, AFullDiskFailsNamingTheFileAndKeepsTheExistingOutput) {
	TempDir mount_point;
	if (mount("tmpfs", mount_point.path().c_str(), "tmpfs", 0, "size=20m") != 0)
		GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
	struct Unmount {
		fs::path path;
		~Unmount() { umount(path.c_str()); }
	} unmount{mount_point.path()};
	TinyLlamaSpec big;
	big.layers = 3;
	big.hidden = 256;
	big.intermediate = 1024;
	big.vocab = 512;
	const auto base = make_tiny_llama(big, 1);
	write_tiny_llama(dir_ / "big-base", big, base);
	write_tiny_llama(dir_ / "big-a", big, perturb(base, 0.1f, 2));
	test::write_file(dir_ / "big.yml", fmt::format("merge_method: task_arithmetic\nbase_model: {}\nmodels:\n"
	                                               "  - model: {}\n    parameters: {{weight: 0.5}}\n",
	                                               (dir_ / "big-base").string(), (dir_ / "big-a").string()));
	const auto out = mount_point / "out";
	auto args = merge_args(out, dir_ / "big.yml");
	args[4] = "4MB";
	auto first = run_child(args);
	ASSERT_EQ(first.exit_code, 0) << first.err;
	const auto before = folder_files(out);
	args.push_back("--force");
	const auto child = run_child(args);
	EXPECT_EQ(child.exit_code, 1) << child.err;
	EXPECT_EQ(std::count(child.err.begin(), child.err.end(), '\n'), 1) << child.err;
	EXPECT_NE(child.err.find("No space left on device"), std::string::npos) << child.err;
	EXPECT_NE(child.err.find(".safetensors"), std::string::npos) << child.err;
	EXPECT_EQ(folder_files(out), before);
	EXPECT_TRUE(temporary_folders(mount_point.path()).empty());
}

} // namespace
} // namespace weld
