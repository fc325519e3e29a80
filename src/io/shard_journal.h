// The journal of an output being written: which shards are complete, so that `weld merge
// --resume` can continue a killed merge from them (exec/merge.h).
//
// It lives in the output's temporary folder as .weld-journal.json, one JSON object:
//   {"journal": "weld-merge-shards", "version": 1,
//    "recipe_sha256": "...", "options": "seed=0 out_shard_size=5000000000 allow_nonfinite=0",
//    "inputs_sha256": "...", "layout_sha256": "...",
//    "shards": [{"file": "model-00002-of-00004.safetensors", "size": 123, "sha256": "..."}, ...]}
// The first four fields say what the output's bytes depend on; a resumed merge must match them
// all. A shard is added only once its last byte is written and fsync'd, and the journal is
// replaced whole (written beside, fsync'd, renamed over, folder fsync'd), so a kill at any point
// leaves either the old journal or the new one, never a shard listed that is not on disk.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weld {

inline constexpr const char* kShardJournalFile = ".weld-journal.json";

struct ShardRecord {
	std::string file; // the shard's file name in the folder
	uint64_t size = 0;
	std::string sha256; // lowercase hex of the whole file
};

struct ShardJournal {
	// What the bytes depend on: the recipe text, the options that change bytes, the input files
	// (paths, sizes, modification times) and the output layout (shard names and headers).
	std::string recipe_sha256, options, inputs_sha256, layout_sha256;
	std::vector<ShardRecord> shards; // complete shards, in the order they completed
};

// SHA-256 (OpenSSL) as lowercase hex.
std::string sha256_hex(std::string_view bytes);
std::string sha256_hex_of_file(const std::filesystem::path& path);

// The journal in `dir`, or nullopt when there is none. Throws weld::Error when it is unreadable.
std::optional<ShardJournal> read_shard_journal(const std::filesystem::path& dir);
// Replaces the journal in `dir` atomically and durably. Throws weld::Error naming the file.
void write_shard_journal(const std::filesystem::path& dir, const ShardJournal& journal);

// Which of the identity fields differ, as words for a message ("recipe", "options (...)",
// "input models", "output layout"), or "" when they all match.
std::string shard_journal_mismatch(const ShardJournal& recorded, const ShardJournal& now);

} // namespace weld
