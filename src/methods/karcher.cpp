// Karcher (Riemannian) mean on the unit sphere, as mergekit computes it: every source's tensor
// is normalized, their weighted Fréchet mean on the sphere is found by gradient steps through
// the exponential map, and the result is scaled by the mean of the sources' norms.
#include "methods/methods.h"
#include "tensor/spherical.h"
#include "util/error.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

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

class KarcherMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const double max_iter = global_param(info_, input, "max_iter");
		if (max_iter != std::floor(max_iter))
			throw Error(fmt::format("tensor '{}': karcher max_iter must be a whole number, got {:g}", input.tensor_name,
			                        max_iter));
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
