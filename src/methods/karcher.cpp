// Karcher (Riemannian) mean on the unit sphere, as mergekit computes it: every source's tensor
// is normalized, their weighted Fréchet mean on the sphere is found by gradient steps through
// the exponential map, and the result is scaled by the mean of the sources' norms.
//
// Streamed: the mean stays a linear combination of the unit vectors at every step, so one
// statistics pass sums the sources' dot products (the Gram matrix), the iteration runs on the
// combination's coefficients, and the output pass combines each element's sources with them.
#include "methods/methods.h"
#include "methods/reference.h"
#include "tensor/block_gram.h"
#include "tensor/spherical.h"
#include "util/error.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <memory>
#include <numeric>

namespace weld {
namespace {

void divide(std::vector<double>& v, double by) {
	for (double& x : v)
		x /= by;
}

// The unit vectors of the sources whose norm exceeds tol, each weighing 1/count, and the
// iteration on them. Unit vectors are computed on the fly rather than stored.
struct Directions {
	const std::vector<std::span<const float>>& sources;
	const std::vector<double>& norms;
	std::vector<size_t> valid;
	double tol;

	double unit(size_t v, size_t j) const { return sources[valid[v]][j] / norms[valid[v]]; }
	double weight() const { return 1.0 / static_cast<double>(valid.size()); }

	// The normalized mean of the unit vectors, or the first of them if that mean is ~0.
	std::vector<double> start(size_t n) const {
		std::vector<double> u(n, 0.0);
		for (size_t v = 0; v < valid.size(); ++v)
			for (size_t j = 0; j < n; ++j)
				u[j] += weight() * unit(v, j);
		if (const double length = euclidean_norm(u); length >= tol) {
			divide(u, length);
			return u;
		}
		for (size_t j = 0; j < n; ++j)
			u[j] = unit(0, j);
		return u;
	}

	// One step u <- exp_u(T), T = Σ a·θ/sin θ·(uᵢ − cos θ·u); false (u unchanged) once ‖T‖ < tol.
	bool step(std::vector<double>& u) const {
		std::vector<double> cosines, coefficients;
		for (size_t v = 0; v < valid.size(); ++v) {
			double cos = 0;
			for (size_t j = 0; j < u.size(); ++j)
				cos += u[j] * unit(v, j);
			cos = std::clamp(cos, -1.0, 1.0);
			const double theta = std::acos(cos);
			cosines.push_back(cos);
			coefficients.push_back(theta < tol ? 0.0 : weight() * theta / std::sin(theta));
		}
		// T element by element; each element's update needs only its own old value.
		const auto gradient = [&](size_t j) {
			double sum = 0;
			for (size_t v = 0; v < valid.size(); ++v)
				sum += coefficients[v] * (unit(v, j) - cosines[v] * u[j]);
			return sum;
		};
		double length = 0;
		for (size_t j = 0; j < u.size(); ++j) {
			const double g = gradient(j);
			length += g * g;
		}
		length = std::sqrt(length);
		if (length < tol) return false;
		const double c = std::cos(length), s = std::sin(length) / length;
		for (size_t j = 0; j < u.size(); ++j) {
			const double g = gradient(j);
			u[j] = c * u[j] + s * g;
		}
		if (const double norm_u = euclidean_norm(u); norm_u > tol) divide(u, norm_u);
		return true;
	}
};

// Directions on coefficients: u = Σ α_v·unit_v, where the unit vectors' dot products are
// gram[v][w]; u·unit_v = (gram·α)_v and |u|² = αᵀ·gram·α.
struct UnitCombination {
	Gram gram; // of the valid unit vectors
	double tol;

	double weight() const { return 1.0 / static_cast<double>(gram.size()); }

	std::vector<double> start() const {
		std::vector<double> alpha(gram.size(), weight());
		if (const double length = std::sqrt(squared_length(gram, alpha)); length >= tol) {
			divide(alpha, length);
			return alpha;
		}
		std::fill(alpha.begin(), alpha.end(), 0.0);
		alpha[0] = 1;
		return alpha;
	}

	// Directions::step with T = Σ_v coefficient_v·unit_v − (Σ_v coefficient_v·cos_v)·u.
	bool step(std::vector<double>& alpha) const {
		const std::vector<double> dots = gram_times(gram, alpha);
		const size_t count = alpha.size();
		std::vector<double> gradient(count);
		double along_u = 0;
		for (size_t v = 0; v < count; ++v) {
			const double cos = std::clamp(dots[v], -1.0, 1.0);
			const double theta = std::acos(cos);
			gradient[v] = theta < tol ? 0.0 : weight() * theta / std::sin(theta);
			along_u += gradient[v] * cos;
		}
		for (size_t v = 0; v < count; ++v)
			gradient[v] -= along_u * alpha[v];
		const double length = std::sqrt(squared_length(gram, gradient));
		if (length < tol) return false;
		const double c = std::cos(length), s = std::sin(length) / length;
		for (size_t v = 0; v < count; ++v)
			alpha[v] = c * alpha[v] + s * gradient[v];
		if (const double norm_u = std::sqrt(squared_length(gram, alpha)); norm_u > tol) divide(alpha, norm_u);
		return true;
	}
};

// One statistics pass: the sources' Gram matrix; then the iteration on coefficients.
class KarcherBlocks final : public BlockMerge {
public:
	KarcherBlocks(size_t sources, double max_iter, double tol, uint64_t elements)
	    : max_iter_(max_iter), tol_(tol), gram_(all_of(sources), std::nullopt, block_count(elements)) {}

	int stat_passes() const override { return 1; }
	void observe(int, const Block& block, unsigned) override { gram_.observe(block.index, block.sources); }

	void end_pass(int) override {
		const Gram gram = gram_.combine();
		const size_t count = gram.size();
		for (size_t i = 0; i < count; ++i) {
			norms_.push_back(std::sqrt(gram[i][i]));
			scale_ += norms_.back() / static_cast<double>(count);
		}
		for (size_t i = 0; i < count; ++i)
			if (norms_[i] > tol_) valid_.push_back(i);
		if (valid_.empty()) return;
		UnitCombination directions{Gram(valid_.size(), std::vector<double>(valid_.size())), tol_};
		for (size_t v = 0; v < valid_.size(); ++v)
			for (size_t w = 0; w < valid_.size(); ++w)
				directions.gram[v][w] = gram[valid_[v]][valid_[w]] / (norms_[valid_[v]] * norms_[valid_[w]]);
		alpha_ = directions.start();
		while (steps_ < max_iter_ && directions.step(alpha_))
			++steps_;
	}

	void merge(const Block& block, std::span<float> out, unsigned) override {
		// Sources outermost, so the element loops vectorize; each element sums in source order.
		double u[kBlockElements];
		std::fill_n(u, out.size(), 0.0);
		for (size_t v = 0; v < valid_.size(); ++v) {
			const float* x = block.sources[valid_[v]].data();
			const double alpha = alpha_[v], norm = norms_[valid_[v]];
			for (size_t j = 0; j < out.size(); ++j)
				u[j] += alpha * (x[j] / norm);
		}
		for (size_t j = 0; j < out.size(); ++j)
			out[j] = static_cast<float>(scale_ * u[j]);
	}

	std::vector<std::string> notes() const override { return {fmt::format("karcher: {} step(s)", steps_)}; }

private:
	static std::vector<size_t> all_of(size_t count) {
		std::vector<size_t> indices(count);
		std::iota(indices.begin(), indices.end(), size_t{0});
		return indices;
	}

	double max_iter_, tol_;
	BlockGram gram_;
	std::vector<double> norms_; // per source
	double scale_ = 0;          // the mean norm
	std::vector<size_t> valid_; // sources with norm > tol
	std::vector<double> alpha_; // the mean's coefficients on the valid unit vectors
	int steps_ = 0;
};

class KarcherMethod final : public MergeMethod, public WholeTensorReference {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const auto kernel = block_merge(input, input.sources.size(), out.size(), 1);
		merge_in_blocks(*kernel, input, out);
	}

	std::unique_ptr<BlockMerge> block_merge(const MergeInput& input, size_t source_count, uint64_t elements,
	                                        unsigned) const override {
		check_source_count(info_, input, source_count);
		return std::make_unique<KarcherBlocks>(source_count, max_iter(input), global_param(info_, input, "tol"),
		                                       elements);
	}

	// The whole-tensor form, kept as the reference of the streamed one.
	void merge_whole(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const double max_iter = this->max_iter(input);
		// Every source counts equally, the base too when it is listed (mergekit has no weights).
		std::vector<double> norms;
		double scale = 0; // the mean norm, zero and tiny ones included
		for (const auto& source : input.sources) {
			norms.push_back(euclidean_norm(source));
			scale += norms.back() / static_cast<double>(input.sources.size());
		}
		Directions directions{input.sources, norms, {}, global_param(info_, input, "tol")};
		for (size_t i = 0; i < norms.size(); ++i)
			if (norms[i] > directions.tol) directions.valid.push_back(i);
		if (directions.valid.empty()) {
			std::fill(out.begin(), out.end(), 0.0f);
			return;
		}
		std::vector<double> u = directions.start(out.size());
		int steps = 0;
		while (steps < max_iter && directions.step(u))
			++steps;
		if (input.notes) input.notes->push_back(fmt::format("karcher: {} step(s)", steps));
		for (size_t j = 0; j < out.size(); ++j)
			out[j] = static_cast<float>(scale * u[j]);
	}

private:
	double max_iter(const MergeInput& input) const {
		const double value = global_param(info_, input, "max_iter");
		if (value != std::floor(value))
			throw Error(fmt::format("tensor '{}': karcher max_iter must be a whole number, got {:g}", input.tensor_name,
			                        value));
		return value;
	}

	MethodInfo info_{
	    .name = "karcher",
	    .description = "Riemannian (Karcher) mean of the models' directions, scaled by their mean norm",
	    .reference = "https://en.wikipedia.org/wiki/Karcher_mean",
	    .global_params = {{.name = "max_iter",
	                       .default_value = 10,
	                       .help = "Most gradient steps",
	                       .min_value = 0,
	                       .max_value = 100000},
	                      {.name = "tol", .default_value = 1e-5, .help = "Convergence tolerance", .min_value = 0}},
	    .model_params = {},
	    .base = BaseModel::Optional,
	};
};

} // namespace

const MergeMethod& karcher_method() {
	static const KarcherMethod method;
	return method;
}

} // namespace weld
