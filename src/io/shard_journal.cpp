#include "io/shard_journal.h"

#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <unistd.h>
#include <vector>

namespace weld {
namespace fs = std::filesystem;
namespace {

constexpr const char* kJournalKind = "weld-merge-shards";
constexpr int kJournalVersion = 1;

struct DigestDeleter {
	void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

class Sha256 {
public:
	Sha256() : ctx_(EVP_MD_CTX_new()) {
		if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) throw Error("SHA-256 is not available");
	}
	void update(const void* data, size_t size) {
		if (EVP_DigestUpdate(ctx_.get(), data, size) != 1) throw Error("SHA-256 failed");
	}
	std::string hex() {
		unsigned char digest[EVP_MAX_MD_SIZE];
		unsigned int length = 0;
		if (EVP_DigestFinal_ex(ctx_.get(), digest, &length) != 1) throw Error("SHA-256 failed");
		std::string out;
		for (unsigned i = 0; i < length; i++)
			out += fmt::format("{:02x}", digest[i]);
		return out;
	}

private:
	std::unique_ptr<EVP_MD_CTX, DigestDeleter> ctx_;
};

void write_all(int fd, const std::string& text, const fs::path& path) {
	size_t done = 0;
	while (done < text.size()) {
		const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
		if (n < 0 && errno == EINTR) continue;
		if (n <= 0) throw Error(fmt::format("{}: cannot write: {}", path.string(), std::strerror(errno)));
		done += static_cast<size_t>(n);
	}
}

void fsync_folder(const fs::path& dir) {
	const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) return; // best effort: some file systems do not open folders
	::fsync(fd);
	::close(fd);
}

} // namespace

std::string sha256_hex(std::string_view bytes) {
	Sha256 sha;
	sha.update(bytes.data(), bytes.size());
	return sha.hex();
}

std::string sha256_hex_of_file(const fs::path& path) {
	const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0) throw Error(fmt::format("{}: cannot read: {}", path.string(), std::strerror(errno)));
	Sha256 sha;
	std::vector<char> buffer(1 << 20);
	for (;;) {
		const ssize_t n = ::read(fd, buffer.data(), buffer.size());
		if (n < 0 && errno == EINTR) continue;
		if (n < 0) {
			const int error = errno;
			::close(fd);
			throw Error(fmt::format("{}: cannot read: {}", path.string(), std::strerror(error)));
		}
		if (n == 0) break;
		sha.update(buffer.data(), static_cast<size_t>(n));
	}
	::close(fd);
	return sha.hex();
}

std::optional<ShardJournal> read_shard_journal(const fs::path& dir) {
	const auto path = dir / kShardJournalFile;
	std::error_code ec;
	if (!fs::exists(path, ec)) return std::nullopt;
	const auto bad = [&](const std::string& why) {
		return Error(fmt::format("{}: not a weld shard journal: {}", path.string(), why));
	};
	std::string text;
	{
		const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
		if (fd < 0) throw bad(std::strerror(errno));
		char buffer[65536];
		for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) != 0;) {
			if (n < 0 && errno == EINTR) continue;
			if (n < 0) {
				::close(fd);
				throw bad(std::strerror(errno));
			}
			text.append(buffer, static_cast<size_t>(n));
		}
		::close(fd);
	}
	try {
		const auto j = nlohmann::json::parse(text);
		if (j.value("journal", "") != kJournalKind) throw bad("no \"journal\": \"weld-merge-shards\"");
		if (j.value("version", 0) != kJournalVersion)
			throw bad(fmt::format("version {} (this weld reads {})", j.value("version", 0), kJournalVersion));
		ShardJournal journal;
		journal.recipe_sha256 = j.at("recipe_sha256").get<std::string>();
		journal.options = j.at("options").get<std::string>();
		journal.inputs_sha256 = j.at("inputs_sha256").get<std::string>();
		journal.layout_sha256 = j.at("layout_sha256").get<std::string>();
		for (const auto& s : j.at("shards"))
			journal.shards.push_back(
			    {s.at("file").get<std::string>(), s.at("size").get<uint64_t>(), s.at("sha256").get<std::string>()});
		return journal;
	} catch (const nlohmann::json::exception& e) {
		throw bad(e.what());
	}
}

void write_shard_journal(const fs::path& dir, const ShardJournal& journal) {
	nlohmann::json j;
	j["journal"] = kJournalKind;
	j["version"] = kJournalVersion;
	j["recipe_sha256"] = journal.recipe_sha256;
	j["options"] = journal.options;
	j["inputs_sha256"] = journal.inputs_sha256;
	j["layout_sha256"] = journal.layout_sha256;
	j["shards"] = nlohmann::json::array();
	for (const auto& s : journal.shards)
		j["shards"].push_back({{"file", s.file}, {"size", s.size}, {"sha256", s.sha256}});
	const std::string text = j.dump(1) + "\n";
	const auto path = dir / kShardJournalFile;
	const auto next = dir / (std::string(kShardJournalFile) + ".next");
	const int fd = ::open(next.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) throw Error(fmt::format("{}: cannot create: {}", next.string(), std::strerror(errno)));
	try {
		write_all(fd, text, next);
		if (::fsync(fd) != 0) throw Error(fmt::format("{}: cannot sync: {}", next.string(), std::strerror(errno)));
	} catch (...) {
		::close(fd);
		throw;
	}
	if (::close(fd) != 0) throw Error(fmt::format("{}: cannot close: {}", next.string(), std::strerror(errno)));
	if (::rename(next.c_str(), path.c_str()) != 0)
		throw Error(fmt::format("{}: cannot replace: {}", path.string(), std::strerror(errno)));
	fsync_folder(dir);
}

std::string shard_journal_mismatch(const ShardJournal& recorded, const ShardJournal& now) {
	std::vector<std::string> differ;
	if (recorded.recipe_sha256 != now.recipe_sha256) differ.push_back("recipe");
	if (recorded.options != now.options)
		differ.push_back(fmt::format("options ({} then, {} now)", recorded.options, now.options));
	if (recorded.inputs_sha256 != now.inputs_sha256) differ.push_back("input model files");
	if (recorded.layout_sha256 != now.layout_sha256) differ.push_back("output layout");
	return fmt::format("{}", fmt::join(differ, ", "));
}

} // namespace weld
