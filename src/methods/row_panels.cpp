#include "methods/row_panels.h"
#include "methods/methods.h"
#include "util/error.h"

#include <algorithm>
#include <condition_variable>
#include <fmt/format.h>
#include <map>
#include <mutex>

namespace weld {
namespace {

// How far ahead of its turn a block may arrive before it waits (OrderedRowPanels).
constexpr uint64_t kWaitingBlocks = 256;

// Whole rows of every task vector, in row order and in panels of panel_rows rows, whatever order
// and threads the blocks arrive in, so that sums over the panels add in one order for any thread
// count. A block that arrives more than kWaitingBlocks blocks ahead of its turn waits: the executor hands
// blocks out in increasing order, so the block whose turn it is is always on its way (and
// merge_in_blocks passes them in order). abandon() ends the waits when a pass fails elsewhere.
class OrderedRowPanels {
public:
	using Consume = std::function<void(const std::vector<linalg::MatrixF>& panel)>;

	OrderedRowPanels(size_t tasks, size_t cols, size_t panel_rows)
	    : tasks_(tasks), cols_(cols), panel_rows_(panel_rows) {}

	// Before each pass: what to do with each full panel.
	void start(Consume consume) {
		consume_ = std::move(consume);
		next_ = 0;
		filled_ = 0;
		panel_.assign(tasks_, linalg::MatrixF(panel_rows_, cols_));
	}

	// Block `block`'s task values: task t's at [t · size, (t + 1) · size), whole rows.
	void add(uint64_t block, std::vector<float> values) {
		std::unique_lock lock(mutex_);
		turn_.wait(lock, [&] { return abandoned_ || block < next_ + kWaitingBlocks; });
		if (abandoned_) return;
		pending_.emplace(block, std::move(values));
		if (busy_) return; // the thread appending now takes this block when its turn comes
		busy_ = true;
		while (!abandoned_ && !pending_.empty() && pending_.begin()->first == next_) {
			std::vector<float> rows = std::move(pending_.begin()->second);
			pending_.erase(pending_.begin());
			lock.unlock();
			try {
				append(rows);
			} catch (...) {
				lock.lock();
				busy_ = false;
				abandoned_ = true;
				turn_.notify_all();
				throw;
			}
			lock.lock();
			++next_;
			turn_.notify_all();
		}
		busy_ = false;
	}

	// After each pass: the last, partial panel.
	void finish(uint64_t blocks) {
		if (next_ != blocks || !pending_.empty())
			throw Error(fmt::format("{} of {} blocks reached the row sums", next_, blocks));
		if (filled_ == 0) return;
		for (auto& matrix : panel_) {
			matrix.rows = filled_;
			matrix.data.resize(filled_ * cols_);
		}
		consume_(panel_);
		filled_ = 0;
	}

	void abandon() {
		std::lock_guard lock(mutex_);
		abandoned_ = true;
		turn_.notify_all();
	}

private:
	void append(const std::vector<float>& values) {
		const size_t size = values.size() / tasks_;
		for (size_t row = 0; row * cols_ < size; ++row) {
			for (size_t t = 0; t < tasks_; ++t)
				std::copy_n(&values[t * size + row * cols_], cols_, &panel_[t].data[filled_ * cols_]);
			if (++filled_ == panel_rows_) {
				consume_(panel_);
				filled_ = 0;
			}
		}
	}

	size_t tasks_, cols_, panel_rows_;
	Consume consume_;
	std::vector<linalg::MatrixF> panel_;
	size_t filled_ = 0;
	std::mutex mutex_;
	std::condition_variable turn_;
	std::map<uint64_t, std::vector<float>> pending_;
	uint64_t next_ = 0;
	bool busy_ = false, abandoned_ = false;
};

size_t default_panel_rows(uint64_t cols) {
	return std::max<size_t>(1, (size_t{1} << 19) / cols);
}

class StreamedRowPanels final : public BlockMerge {
public:
	StreamedRowPanels(std::unique_ptr<RowPanelAlgorithm> algorithm, TaskVectors tasks, double scale, uint64_t rows,
	                  uint64_t cols, size_t panel_rows)
	    : algorithm_(std::move(algorithm)), tasks_(std::move(tasks)), scale_(scale), rows_(rows), cols_(cols),
	      panels_(tasks_.models.size(), cols, panel_rows) {
		start();
	}

	int stat_passes() const override { return algorithm_->passes(); }

	void observe(int, const Block& block, unsigned) override {
		const size_t size = block.size();
		std::vector<float> values(tasks_.models.size() * size);
		for (size_t t = 0; t < tasks_.models.size(); ++t)
			for (size_t j = 0; j < size; ++j)
				values[t * size + j] = tasks_.value(block.sources, t, j);
		panels_.add(block.index, std::move(values));
	}

	void end_pass(int pass) override {
		panels_.finish(block_count(rows_ * cols_));
		algorithm_->end_pass();
		if (pass + 1 < algorithm_->passes()) start();
	}

	void abandon() override { panels_.abandon(); }

	void merge(const Block& block, std::span<float> out, unsigned) override {
		const size_t size = block.size(), rows = size / cols_;
		std::vector<linalg::MatrixF> task_rows(tasks_.models.size(), linalg::MatrixF(rows, cols_));
		for (size_t t = 0; t < task_rows.size(); ++t)
			for (size_t j = 0; j < size; ++j)
				task_rows[t].data[j] = tasks_.value(block.sources, t, j);
		const linalg::MatrixD delta = algorithm_->merged_rows(task_rows, block.offset / cols_);
		const std::span<const float> base = block.sources[tasks_.base];
		for (size_t j = 0; j < size; ++j)
			out[j] = base[j] + static_cast<float>(scale_ * delta.data[j]);
	}

	std::vector<std::string> notes() const override {
		return {fmt::format("{}, streamed ({} × {} matrix)", algorithm_->note(), rows_, cols_)};
	}

private:
	void start() {
		panels_.start([this](const std::vector<linalg::MatrixF>& panel) { algorithm_->add_panel(panel); });
	}

	std::unique_ptr<RowPanelAlgorithm> algorithm_;
	TaskVectors tasks_;
	double scale_;
	uint64_t rows_, cols_;
	OrderedRowPanels panels_;
};

} // namespace

TaskVectors TaskVectors::of(const MergeInput& input, size_t source_count, std::vector<double> weights) {
	TaskVectors tasks{.models = model_indices(input, source_count),
	                  .weights = std::move(weights),
	                  .base = static_cast<size_t>(input.base_index)};
	if (tasks.weights.empty()) tasks.weights.assign(tasks.models.size(), 1.0);
	return tasks;
}

uint64_t row_panel_working_bytes(size_t tasks, uint64_t rows, uint64_t cols, uint64_t squares) {
	const uint64_t n = std::min(rows, cols), panel = uint64_t{1} << 19;
	const uint64_t waiting = kWaitingBlocks * tasks * kBlockElements * sizeof(float);
	return squares * n * n * sizeof(double) + (tasks + 1) * panel * (2 * sizeof(float) + sizeof(double)) + waiting;
}

bool streams_as_rows(const MergeInput& input, uint64_t elements, uint64_t min_elements) {
	if (input.shape.size() != 2 || input.shape[0] == 0 || input.shape[1] == 0) return false;
	const uint64_t rows = input.shape[0], cols = input.shape[1];
	return elements >= min_elements && rows >= cols && rows * cols == elements && kBlockElements % cols == 0;
}

std::unique_ptr<BlockMerge> stream_row_panels(std::unique_ptr<RowPanelAlgorithm> algorithm, TaskVectors tasks,
                                              double scale, uint64_t rows, uint64_t cols, size_t panel_rows) {
	return std::make_unique<StreamedRowPanels>(std::move(algorithm), std::move(tasks), scale, rows, cols,
	                                           panel_rows ? panel_rows : default_panel_rows(cols));
}

void merge_in_row_panels(const MergeInput& input, const TaskVectors& tasks, double scale,
                         const std::function<std::unique_ptr<RowPanelAlgorithm>(uint64_t, uint64_t)>& make_algorithm,
                         std::span<float> out) {
	const uint64_t rows = input.shape[0], cols = input.shape[1];
	const bool wide = rows < cols;
	const uint64_t tall_rows = wide ? cols : rows, tall_cols = wide ? rows : cols;
	const size_t panel_rows = default_panel_rows(tall_cols);
	// fn(r, c, flat index) for every element (r, c) of the tall form's `count` rows from
	// `first`. A wide matrix's tall rows are its columns: read down in tiles of 32 columns, not
	// one element per cache line.
	const auto for_each_element = [&](uint64_t first, size_t count, const auto& fn) {
		if (!wide) {
			for (size_t r = 0; r < count; ++r)
				for (size_t c = 0; c < tall_cols; ++c)
					fn(r, c, (first + r) * cols + c);
			return;
		}
		constexpr size_t kTile = 32;
		for (size_t tile = 0; tile < tall_cols; tile += kTile)
			for (size_t r = 0; r < count; ++r)
				for (size_t c = tile; c < std::min(tile + kTile, tall_cols); ++c)
					fn(r, c, c * cols + first + r);
	};
	const auto task_panel = [&](uint64_t first, size_t count) {
		std::vector<linalg::MatrixF> panel(tasks.models.size(), linalg::MatrixF(count, tall_cols));
		for (size_t t = 0; t < panel.size(); ++t)
			for_each_element(first, count, [&](size_t r, size_t c, uint64_t i) {
				panel[t](r, c) = tasks.value(input.sources, t, i);
			});
		return panel;
	};
	const std::unique_ptr<RowPanelAlgorithm> algorithm = make_algorithm(tall_rows, tall_cols);
	for (int pass = 0; pass < algorithm->passes(); ++pass) {
		for (uint64_t first = 0; first < tall_rows; first += panel_rows)
			algorithm->add_panel(task_panel(first, std::min<uint64_t>(panel_rows, tall_rows - first)));
		algorithm->end_pass();
	}
	const std::span<const float> base = input.sources[tasks.base];
	for (uint64_t first = 0; first < tall_rows; first += panel_rows) {
		const size_t count = std::min<uint64_t>(panel_rows, tall_rows - first);
		const linalg::MatrixD delta = algorithm->merged_rows(task_panel(first, count), first);
		for_each_element(first, count, [&](size_t r, size_t c, uint64_t i) {
			out[i] = base[i] + static_cast<float>(scale * delta(r, c));
		});
	}
	if (input.notes)
		input.notes->push_back(
		    fmt::format("{} ({} × {} matrix{})", algorithm->note(), rows, cols, wide ? ", as its transpose" : ""));
}

} // namespace weld
