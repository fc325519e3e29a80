#include "methods/subspace_util.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <algorithm>
#include <fmt/format.h>

namespace weld::subspace {

bool is_matrix(const MergeInput& input) {
	return input.shape.size() == 2 && input.shape[0] > 0 && input.shape[1] > 0;
}

linalg::MatrixF task_matrix(const MergeInput& input, size_t source, double scale) {
	const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)], x = input.sources[source];
	const size_t rows = is_matrix(input) ? input.shape[0] : 1;
	linalg::MatrixF m(rows, base.size() / rows);
	for (size_t j = 0; j < base.size(); ++j)
		m.data[j] = task_value(x[j], base[j], scale);
	return m;
}

std::vector<linalg::MatrixF> task_matrices(const MergeInput& input, const std::vector<double>& scales) {
	std::vector<linalg::MatrixF> tasks;
	for (size_t i = 0; i < input.sources.size(); ++i)
		if (static_cast<int>(i) != input.base_index)
			tasks.push_back(task_matrix(input, i, scales.empty() ? 1.0 : scales[tasks.size()]));
	return tasks;
}

std::vector<float> mean_of(const std::vector<linalg::MatrixF>& tasks) {
	std::vector<float> out(tasks[0].data.size());
	for (size_t j = 0; j < out.size(); ++j) {
		double sum = 0;
		for (const auto& t : tasks)
			sum += t.data[j];
		out[j] = static_cast<float>(sum / static_cast<double>(tasks.size()));
	}
	return out;
}

size_t rank_share(size_t rows, size_t cols, size_t tasks) {
	return std::max<size_t>(1, std::min(rows, cols) / tasks);
}

linalg::Svd<float> concatenated_factors(const std::vector<linalg::MatrixF>& tasks, size_t k, const MergeInput& input,
                                        std::vector<std::string>* notes) {
	const size_t m = tasks.at(0).rows, n = tasks[0].cols, width = k * tasks.size();
	linalg::Svd<float> cat{linalg::MatrixF(m, width), std::vector<float>(width), linalg::MatrixF(width, n)};
	for (size_t t = 0; t < tasks.size(); ++t) {
		linalg::SvdPath path{};
		const uint64_t key = random_stream_key(input.random_seed, input.tensor_name, t);
		const linalg::Svd<float> s = linalg::truncated_svd(tasks[t], k, key, &path);
		if (notes && t == 0) notes->push_back(fmt::format("top-{} singular vectors by {}", k, linalg::to_string(path)));
		// k may exceed the rank available (min(m, n) < k): missing triplets stay zero.
		for (size_t j = 0; j < s.S.size(); ++j) {
			cat.S[t * k + j] = s.S[j];
			for (size_t r = 0; r < m; ++r)
				cat.U(r, t * k + j) = s.U(r, j);
			std::copy_n(&s.Vt.data[j * n], n, &cat.Vt.data[(t * k + j) * n]);
		}
	}
	return cat;
}

void rethrow_naming_tensor(const MergeInput& input, std::string_view method) {
	try {
		throw;
	} catch (const Error& e) {
		const std::string prefix = fmt::format("tensor '{}'", input.tensor_name);
		if (std::string_view(e.what()).starts_with(prefix)) throw;
		throw Error(fmt::format("{}: {} merge: {}", prefix, method, e.what()));
	}
}

void write_base_plus(const MergeInput& input, std::span<const float> delta, std::span<float> out) {
	const std::span<const float> base = input.sources[static_cast<size_t>(input.base_index)];
	for (size_t j = 0; j < out.size(); ++j)
		out[j] = base[j] + delta[j];
}

} // namespace weld::subspace
