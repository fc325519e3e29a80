// Distributed merges, the parts one process can check: how shards are given to ranks, writers
// that each write one part of an output, and the single-rank Distributed. The MPI run itself is
// the mpi_merge CTest (tests/mpi_merge_test).
#include "exec/distributed.h"
#include "io/safetensors.h"
#include "util/error.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "test_util.h"

namespace weld {
namespace {

namespace fs = std::filesystem;

using test::TempDir;

// n tensors of 1-byte elements with the given sizes.
std::vector<OutputTensorSpec> specs_of(const std::vector<uint64_t>& sizes) {
	std::vector<OutputTensorSpec> specs;
	for (size_t i = 0; i < sizes.size(); i++)
		specs.push_back({fmt::format("t{}", i), DType::U8, {sizes[i]}});
	return specs;
}

std::vector<uint8_t> bytes_of(size_t n, size_t seed) {
	std::vector<uint8_t> out(n);
	for (size_t i = 0; i < n; i++)
		out[i] = static_cast<uint8_t>(seed * 31 + i * 7);
	return out;
}

uint64_t bytes_of_rank(const OutputLayout& layout, const std::vector<unsigned>& owner, unsigned rank) {
	uint64_t bytes = 0;
	for (size_t k = 0; k < layout.shards.size(); k++)
		if (owner[k] == rank) bytes += layout.shards[k].file_size;
	return bytes;
}

TEST(ShardRanks, EqualShardsSplitExactly) {
	const auto layout = plan_output_layout(specs_of(std::vector<uint64_t>(8, 1000)), 1000);
	ASSERT_EQ(layout.shards.size(), 8u);
	for (unsigned ranks : {1u, 2u, 4u, 8u}) {
		const auto owner = shard_ranks(layout, ranks);
		ASSERT_EQ(owner.size(), 8u);
		for (size_t k = 0; k < 8; k++)
			EXPECT_EQ(owner[k], k / (8 / ranks)) << "shard " << k << " of 8 over " << ranks << " ranks";
	}
}

TEST(ShardRanks, OneShardHasOneRank) {
	const auto layout = plan_output_layout(specs_of({10, 20}), UINT64_MAX);
	EXPECT_EQ(shard_ranks(layout, 1), std::vector<unsigned>{0});
	EXPECT_EQ(shard_ranks(layout, 2), std::vector<unsigned>{0}); // its middle byte is in the first half
	for (unsigned ranks : {3u, 64u}) {
		const auto owner = shard_ranks(layout, ranks);
		ASSERT_EQ(owner.size(), 1u);
		EXPECT_LT(owner[0], ranks);
	}
	EXPECT_THROW(shard_ranks(layout, 0), Error);
}

TEST(ShardRanks, MoreRanksThanShardsGivesEachShardItsOwnRank) {
	const auto layout = plan_output_layout(specs_of({100, 100, 100}), 100);
	const auto owner = shard_ranks(layout, 7);
	ASSERT_EQ(owner.size(), 3u);
	EXPECT_LT(owner[0], owner[1]);
	EXPECT_LT(owner[1], owner[2]);
	EXPECT_LT(owner[2], 7u);
}

// Uneven tensors (some larger than a shard): every shard has one rank, ranks come in order
// (contiguous runs), and each rank's bytes are within one largest shard of an equal share.
TEST(ShardRanks, RandomLayoutsDivideEvenly) {
	std::mt19937_64 rng(7);
	for (int trial = 0; trial < 200; trial++) {
		std::vector<uint64_t> sizes(1 + rng() % 60);
		for (auto& s : sizes)
			s = rng() % 5 == 0 ? 3000 + rng() % 5000 : 1 + rng() % 1500;
		const auto layout = plan_output_layout(specs_of(sizes), 2000);
		uint64_t total = 0, largest = 0;
		for (const auto& shard : layout.shards) {
			total += shard.file_size;
			largest = std::max(largest, shard.file_size);
		}
		for (unsigned ranks = 1; ranks <= 9; ranks++) {
			const auto owner = shard_ranks(layout, ranks);
			ASSERT_EQ(owner.size(), layout.shards.size());
			EXPECT_TRUE(std::is_sorted(owner.begin(), owner.end()));
			uint64_t sum = 0;
			for (unsigned r = 0; r < ranks; r++) {
				const uint64_t mine = bytes_of_rank(layout, owner, r);
				sum += mine;
				const double share = static_cast<double>(total) / ranks;
				EXPECT_LE(std::abs(static_cast<double>(mine) - share), static_cast<double>(largest))
				    << "trial " << trial << ", rank " << r << " of " << ranks;
			}
			EXPECT_EQ(sum, total); // every shard exactly once
		}
	}
}

// Three writers, one per part, into one folder: the same files, byte for byte, as one writer of
// the whole output.
TEST(WriterParts, PartsTogetherWriteTheWholeOutput) {
	const auto specs = specs_of({300, 50, 700, 120, 400, 90, 260, 610});
	const uint64_t max_shard = 500;
	TempDir whole, parts;
	{
		SafetensorsWriter w(whole.path(), specs, max_shard);
		for (size_t i = 0; i < specs.size(); i++) {
			EXPECT_TRUE(w.owns(i));
			w.write(i, bytes_of(specs[i].nbytes(), i));
		}
		w.finish();
	}
	const auto layout = plan_output_layout(specs, max_shard);
	ASSERT_GE(layout.shards.size(), 3u);
	const auto owner = shard_ranks(layout, 3);
	for (unsigned rank = 0; rank < 3; rank++) {
		SafetensorsWriter w(parts.path(), specs, max_shard, {rank, 3});
		for (size_t k = 0; k < layout.shards.size(); k++) // it created its own shards only so far
			EXPECT_EQ(fs::exists(parts.path() / layout.shards[k].file_name), owner[k] <= rank)
			    << layout.shards[k].file_name;
		for (size_t i = 0; i < specs.size(); i++) {
			EXPECT_EQ(w.owns(i), owner[layout.shard_of[i]] == rank);
			if (w.owns(i)) w.write(i, bytes_of(specs[i].nbytes(), i));
		}
		w.finish();
		EXPECT_FALSE(fs::exists(parts.path() / "model.safetensors.index.json")) << "a part wrote the index";
	}
	write_shard_index(parts.path(), specs, layout);
	std::vector<std::string> names;
	for (const auto& entry : fs::directory_iterator(whole.path()))
		names.push_back(entry.path().filename().string());
	EXPECT_EQ(names.size(), layout.shards.size() + 1);
	for (const auto& name : names)
		EXPECT_EQ(test::read_file(whole.path() / name), test::read_file(parts.path() / name)) << name;
}

TEST(WriterParts, RefusesOtherPartsTensorsAndChecksOnlyItsOwn) {
	const auto specs = specs_of({100, 100, 100, 100});
	TempDir dir;
	SafetensorsWriter w(dir.path(), specs, 100, {1, 2});
	EXPECT_FALSE(w.owns(0));
	EXPECT_TRUE(w.owns(3));
	try {
		w.write(0, bytes_of(100, 0));
		FAIL() << "wrote another part's tensor";
	} catch (const Error& e) {
		EXPECT_NE(std::string(e.what()).find("tensor 't0' is in shard model-00001-of-00004.safetensors, which rank 0 "
		                                     "writes, not rank 1"),
		          std::string::npos)
		    << e.what();
	}
	w.write(2, bytes_of(100, 2));
	try {
		w.finish();
		FAIL() << "finished without tensor t3";
	} catch (const Error& e) {
		EXPECT_NE(std::string(e.what()).find("1 of 2 tensors were never written (first: 't3')"), std::string::npos)
		    << e.what();
	}
	w.write(3, bytes_of(100, 3));
	w.finish();
	EXPECT_THROW(SafetensorsWriter(dir.path(), specs, 100, {2, 2}), Error);
}

TEST(WriterParts, APartWithNoShardsFinishes) {
	TempDir dir;
	SafetensorsWriter w(dir.path(), specs_of({10}), UINT64_MAX, {1, 2});
	EXPECT_FALSE(w.owns(0));
	w.finish();
	EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(Distributed, OneRankRunsStepsAsTheyAre) {
	const Distributed single;
	EXPECT_EQ(single.rank(), 0u);
	EXPECT_EQ(single.size(), 1u);
	EXPECT_TRUE(single.is_root());
	int runs = 0;
	single.agree([&] { runs++; });
	EXPECT_EQ(runs, 1);
	// Not an AgreedError and no "rank 0: ": a single process's messages stay as they were.
	try {
		single.agree([] { throw Error("boom"); });
		FAIL();
	} catch (const AgreedError&) {
		FAIL() << "a single rank needs no agreement";
	} catch (const Error& e) {
		EXPECT_STREQ(e.what(), "boom");
	}
	EXPECT_EQ(single.broadcast("path"), "path");
	EXPECT_EQ(single.all_gather({1, 2, 3}), (std::vector<uint64_t>{1, 2, 3}));
}

} // namespace
} // namespace weld
