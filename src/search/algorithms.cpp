#include "search/algorithms.h"

#include "linalg/linalg.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

namespace weld::search {

namespace {

using linalg::MatrixD;

// Draws from counter-based streams: stream `name` of the seed, index advancing with each draw.
class Draws {
public:
	Draws(uint64_t seed, const char* name) : key_(random_stream_key(seed, name, 0)) {}
	double uniform() { return random_uniform(key_, next_++); }
	double normal() { return linalg::random_normal(key_, next_++); }
	size_t below(size_t n) { return std::min(n - 1, static_cast<size_t>(uniform() * static_cast<double>(n))); }

private:
	uint64_t key_, next_ = 0;
};

std::vector<double> clipped(std::vector<double> x) {
	for (auto& v : x)
		v = std::clamp(v, 0.0, 1.0);
	return x;
}

double setting(const std::map<std::string, double>& settings, const std::string& name, double fallback, double min,
               double max) {
	const auto it = settings.find(name);
	if (it == settings.end()) return fallback;
	if (!(it->second >= min && it->second <= max))
		throw Error(fmt::format("algorithm.{} is {:g}, outside [{:g}, {:g}]", name, it->second, min, max));
	return it->second;
}

void check_settings(const std::map<std::string, double>& settings, const std::string& algorithm,
                    const std::set<std::string>& known) {
	for (const auto& [name, value] : settings)
		if (!known.count(name))
			throw Error(fmt::format("algorithm.{}: {} has no setting '{}' (valid: {})", name, algorithm, name,
			                        fmt::join(known, ", ")));
}

// --- CMA-ES ---

class CmaEs final : public Algorithm {
public:
	CmaEs(size_t n, const std::map<std::string, double>& settings, uint64_t seed)
	    : n_(n), draws_(seed, "cma_es"), mean_(n, 0.5), ps_(n, 0), pc_(n, 0), C_(n, n), B_(n, n), D_(n, 1) {
		check_settings(settings, "cma_es", {"population", "sigma"});
		lambda_ = static_cast<size_t>(
		    setting(settings, "population", 4 + std::floor(3 * std::log(static_cast<double>(n))), 2, 10000));
		sigma_ = setting(settings, "sigma", 0.3, 1e-6, 10);
		mu_ = lambda_ / 2;
		for (size_t i = 0; i < mu_; ++i)
			weights_.push_back(std::log(static_cast<double>(mu_) + 0.5) - std::log(static_cast<double>(i + 1)));
		const double sum = std::accumulate(weights_.begin(), weights_.end(), 0.0);
		double sq = 0;
		for (auto& w : weights_)
			w /= sum, sq += w * w;
		mueff_ = 1 / sq;
		const double N = static_cast<double>(n);
		cs_ = (mueff_ + 2) / (N + mueff_ + 5);
		ds_ = 1 + 2 * std::max(0.0, std::sqrt((mueff_ - 1) / (N + 1)) - 1) + cs_;
		cc_ = (4 + mueff_ / N) / (N + 4 + 2 * mueff_ / N);
		c1_ = 2 / ((N + 1.3) * (N + 1.3) + mueff_);
		cmu_ = std::min(1 - c1_, 2 * (mueff_ - 2 + 1 / mueff_) / ((N + 2) * (N + 2) + mueff_));
		chi_ = std::sqrt(N) * (1 - 1 / (4 * N) + 1 / (21 * N * N));
		for (size_t i = 0; i < n; ++i)
			C_(i, i) = B_(i, i) = 1;
	}

	std::vector<std::vector<double>> ask(uint64_t left) override {
		asked_.clear();
		for (size_t k = 0; k < std::min<uint64_t>(lambda_, left); ++k) {
			std::vector<double> z(n_), x(n_);
			for (auto& v : z)
				v = draws_.normal();
			for (size_t i = 0; i < n_; ++i) {
				double y = 0;
				for (size_t j = 0; j < n_; ++j)
					y += B_(i, j) * D_[j] * z[j];
				x[i] = mean_[i] + sigma_ * y;
			}
			asked_.push_back(clipped(x)); // projected onto the box, and learned from as evaluated
		}
		return asked_;
	}

	void tell(const std::vector<Evaluated>& results) override {
		if (results.size() < 2) return; // a budget's last partial generation teaches nothing usable
		std::vector<size_t> order(results.size());
		std::iota(order.begin(), order.end(), size_t{0});
		std::stable_sort(order.begin(), order.end(),
		                 [&](size_t a, size_t b) { return results[a].fitness > results[b].fitness; });
		const size_t mu = std::min(mu_, results.size());
		std::vector<std::vector<double>> y(mu, std::vector<double>(n_));
		std::vector<double> yw(n_, 0);
		double wsum = 0;
		for (size_t k = 0; k < mu; ++k)
			wsum += weights_[k];
		for (size_t k = 0; k < mu; ++k)
			for (size_t i = 0; i < n_; ++i) {
				y[k][i] = (results[order[k]].genome[i] - mean_[i]) / sigma_;
				yw[i] += weights_[k] / wsum * y[k][i];
			}
		for (size_t i = 0; i < n_; ++i)
			mean_[i] += sigma_ * yw[i];
		// C^{-1/2} yw = B D^{-1} Bᵀ yw
		std::vector<double> bt(n_, 0), cinv(n_, 0);
		for (size_t j = 0; j < n_; ++j)
			for (size_t i = 0; i < n_; ++i)
				bt[j] += B_(i, j) * yw[i];
		for (size_t i = 0; i < n_; ++i)
			for (size_t j = 0; j < n_; ++j)
				cinv[i] += B_(i, j) * bt[j] / D_[j];
		double ps_norm = 0;
		for (size_t i = 0; i < n_; ++i) {
			ps_[i] = (1 - cs_) * ps_[i] + std::sqrt(cs_ * (2 - cs_) * mueff_) * cinv[i];
			ps_norm += ps_[i] * ps_[i];
		}
		ps_norm = std::sqrt(ps_norm);
		++generation_;
		const double hsig_bound = (1.4 + 2 / (static_cast<double>(n_) + 1)) * chi_;
		const bool hsig =
		    ps_norm / std::sqrt(1 - std::pow(1 - cs_, 2.0 * static_cast<double>(generation_))) < hsig_bound;
		for (size_t i = 0; i < n_; ++i)
			pc_[i] = (1 - cc_) * pc_[i] + (hsig ? std::sqrt(cc_ * (2 - cc_) * mueff_) : 0) * yw[i];
		const double old = 1 - c1_ - cmu_ + (hsig ? 0 : c1_ * cc_ * (2 - cc_));
		for (size_t i = 0; i < n_; ++i)
			for (size_t j = 0; j < n_; ++j) {
				double rank_mu = 0;
				for (size_t k = 0; k < mu; ++k)
					rank_mu += weights_[k] / wsum * y[k][i] * y[k][j];
				C_(i, j) = old * C_(i, j) + c1_ * pc_[i] * pc_[j] + cmu_ * rank_mu;
			}
		sigma_ *= std::exp((cs_ / ds_) * (ps_norm / chi_ - 1));
		sigma_ = std::clamp(sigma_, 1e-8, 10.0);
		decompose();
	}

private:
	// C = B diag(D²) Bᵀ: the SVD of the symmetric positive semi-definite C.
	void decompose() {
		for (size_t i = 0; i < n_; ++i)
			for (size_t j = 0; j < i; ++j)
				C_(i, j) = C_(j, i) = (C_(i, j) + C_(j, i)) / 2;
		const auto svd = linalg::svd(C_);
		B_ = svd.U;
		for (size_t j = 0; j < n_; ++j)
			D_[j] = std::sqrt(std::max(svd.S[j], 1e-20));
	}

	size_t n_, lambda_ = 0, mu_ = 0;
	Draws draws_;
	double sigma_ = 0.3, mueff_ = 0, cs_ = 0, ds_ = 0, cc_ = 0, c1_ = 0, cmu_ = 0, chi_ = 0;
	std::vector<double> weights_, mean_, ps_, pc_;
	MatrixD C_, B_;
	std::vector<double> D_;
	uint64_t generation_ = 0;
	std::vector<std::vector<double>> asked_;
};

// --- M2N2 ---

class M2n2 final : public Algorithm {
public:
	M2n2(size_t n, const std::map<std::string, double>& settings, uint64_t seed) : n_(n), draws_(seed, "m2n2") {
		check_settings(settings, "m2n2", {"archive", "children", "mutation"});
		capacity_ = static_cast<size_t>(setting(settings, "archive", 8, 2, 10000));
		children_ = static_cast<size_t>(setting(settings, "children", 4, 1, 10000));
		mutation_ = setting(settings, "mutation", 0.05, 0, 1);
	}

	std::vector<std::vector<double>> ask(uint64_t left) override {
		std::vector<std::vector<double>> out;
		if (archive_.empty()) { // the first archive: random points
			for (size_t k = 0; k < std::min<uint64_t>(capacity_, left); ++k) {
				std::vector<double> x(n_);
				for (auto& v : x)
					v = draws_.uniform();
				out.push_back(x);
			}
			return out;
		}
		const auto shared = shared_fitness(archive_);
		for (size_t c = 0; c < std::min<uint64_t>(children_, left); ++c) {
			const size_t a = roulette(shared, SIZE_MAX);
			std::vector<double> attraction(archive_.size(), 0);
			const auto totals = objective_totals(archive_);
			for (size_t b = 0; b < archive_.size(); ++b)
				for (size_t j = 0; j < totals.size(); ++j)
					attraction[b] +=
					    std::max(0.0, archive_[b].objectives[j] - archive_[a].objectives[j]) / (totals[j] + 1e-12);
			const size_t b = roulette(attraction, a);
			const size_t split = draws_.below(n_ + 1);
			const double w = draws_.uniform();
			std::vector<double> child(n_);
			for (size_t i = 0; i < n_; ++i) {
				const double wa = i < split ? w : 1 - w;
				child[i] = wa * archive_[a].genome[i] + (1 - wa) * archive_[b].genome[i] + mutation_ * draws_.normal();
			}
			out.push_back(clipped(child));
		}
		return out;
	}

	void tell(const std::vector<Evaluated>& results) override {
		archive_.insert(archive_.end(), results.begin(), results.end());
		while (archive_.size() > capacity_) { // the member with the least shared fitness leaves
			const auto shared = shared_fitness(archive_);
			const auto worst = std::min_element(shared.begin(), shared.end()) - shared.begin();
			archive_.erase(archive_.begin() + worst);
		}
	}

private:
	static std::vector<double> objective_totals(const std::vector<Evaluated>& pool) {
		std::vector<double> totals(pool.front().objectives.size(), 0);
		for (const auto& e : pool)
			for (size_t j = 0; j < totals.size(); ++j)
				totals[j] += std::max(0.0, e.objectives[j]);
		return totals;
	}
	// Σ_j s_ij / Σ_k s_kj: a score is worth more where few members score.
	static std::vector<double> shared_fitness(const std::vector<Evaluated>& pool) {
		const auto totals = objective_totals(pool);
		std::vector<double> out(pool.size(), 0);
		for (size_t i = 0; i < pool.size(); ++i)
			for (size_t j = 0; j < totals.size(); ++j)
				out[i] += std::max(0.0, pool[i].objectives[j]) / (totals[j] + 1e-12);
		return out;
	}
	// An index drawn with probability ∝ weight (uniform when all are 0), never `except`.
	size_t roulette(const std::vector<double>& weight, size_t except) {
		double total = 0;
		for (size_t i = 0; i < weight.size(); ++i)
			total += i == except ? 0 : weight[i];
		const double u = draws_.uniform();
		if (!(total > 0)) {
			size_t pick = draws_.below(weight.size() - (except < weight.size() ? 1 : 0));
			return except < weight.size() && pick >= except ? pick + 1 : pick;
		}
		double acc = 0;
		for (size_t i = 0; i < weight.size(); ++i) {
			if (i == except) continue;
			acc += weight[i] / total;
			if (u < acc) return i;
		}
		for (size_t i = weight.size(); i-- > 0;)
			if (i != except) return i;
		return 0;
	}

	size_t n_, capacity_ = 8, children_ = 4;
	double mutation_ = 0.05;
	Draws draws_;
	std::vector<Evaluated> archive_;
};

// --- MAP ---

class Map final : public Algorithm {
public:
	Map(size_t n, const std::map<std::string, double>& settings, const std::vector<double>& weights, uint64_t seed,
	    uint64_t budget)
	    : n_(n), weights_(weights), draws_(seed, "map") {
		check_settings(settings, "map", {"samples", "candidates", "ridge", "batch"});
		samples_ = static_cast<size_t>(
		    setting(settings, "samples", std::max<double>(2, static_cast<double>(budget / 2)), 2, 1e7));
		candidates_ = static_cast<size_t>(setting(settings, "candidates", 4096, 1, 1e7));
		ridge_ = setting(settings, "ridge", 1e-3, 0, 1e6);
		batch_ = static_cast<size_t>(setting(settings, "batch", 20, 1, 1e7));
	}

	std::vector<std::vector<double>> ask(uint64_t left) override {
		std::vector<std::vector<double>> out;
		if (phase_ == 0) {
			for (size_t k = 0; k < std::min<uint64_t>(samples_, left); ++k) {
				std::vector<double> x(n_);
				for (auto& v : x)
					v = draws_.uniform();
				out.push_back(x);
			}
		} else { // refit on everything seen, then the predicted front's best `batch` points
			out = predicted_front(std::min<uint64_t>(left, batch_));
		}
		++phase_;
		return out;
	}

	void tell(const std::vector<Evaluated>& results) override {
		seen_.insert(seen_.end(), results.begin(), results.end());
	}

private:
	// 1, x_i, x_i x_j (i <= j)
	std::vector<double> features(const std::vector<double>& x) const {
		std::vector<double> f = {1};
		f.insert(f.end(), x.begin(), x.end());
		for (size_t i = 0; i < n_; ++i)
			for (size_t j = i; j < n_; ++j)
				f.push_back(x[i] * x[j]);
		return f;
	}

	// Per objective, ridge least squares: (ΦᵀΦ + ridge I) w = Φᵀ y.
	std::vector<std::vector<double>> fit() const {
		const size_t p = features(std::vector<double>(n_, 0)).size(), m = seen_.front().objectives.size();
		MatrixD gram(p, p), rhs(p, m);
		for (const auto& e : seen_) {
			const auto f = features(e.genome);
			for (size_t a = 0; a < p; ++a) {
				for (size_t b = 0; b < p; ++b)
					gram(a, b) += f[a] * f[b];
				for (size_t j = 0; j < m; ++j)
					rhs(a, j) += f[a] * e.objectives[j];
			}
		}
		for (size_t a = 0; a < p; ++a)
			gram(a, a) += std::max(ridge_, 1e-12);
		const auto w = linalg::solve_symmetric(gram, rhs);
		std::vector<std::vector<double>> out(m, std::vector<double>(p));
		for (size_t a = 0; a < p; ++a)
			for (size_t j = 0; j < m; ++j)
				out[j][a] = w(a, j);
		return out;
	}

	// The predicted Pareto front of random points, by predicted fitness, at most `left`.
	std::vector<std::vector<double>> predicted_front(uint64_t left) {
		if (seen_.empty() || left == 0) return {};
		const auto surrogate = fit();
		std::vector<std::vector<double>> points, predicted;
		for (size_t k = 0; k < candidates_; ++k) {
			std::vector<double> x(n_);
			for (auto& v : x)
				v = draws_.uniform();
			const auto f = features(x);
			std::vector<double> o;
			for (const auto& w : surrogate)
				o.push_back(std::inner_product(f.begin(), f.end(), w.begin(), 0.0));
			points.push_back(x);
			predicted.push_back(o);
		}
		auto front = pareto_front(predicted);
		auto score = [&](size_t i) {
			double s = 0, t = 0;
			for (size_t j = 0; j < weights_.size(); ++j)
				s += weights_[j] * predicted[i][j], t += weights_[j];
			return s / t;
		};
		std::stable_sort(front.begin(), front.end(), [&](size_t a, size_t b) { return score(a) > score(b); });
		std::vector<std::vector<double>> out;
		for (size_t i = 0; i < front.size() && out.size() < left; ++i)
			out.push_back(points[front[i]]);
		return out;
	}

	size_t n_, samples_ = 0, candidates_ = 4096, batch_ = 20;
	double ridge_ = 1e-3;
	std::vector<double> weights_;
	Draws draws_;
	int phase_ = 0;
	std::vector<Evaluated> seen_;
};

// --- bayes_mo ---

// ParEGO-style multi-objective Bayesian optimisation: each step draws a weight vector λ on the
// simplex, scalarizes every evaluated point by the augmented Chebyshev function of its objectives
// (scaled to [0, 1] over what was seen), fits a Gaussian process (RBF kernel, lengthscale by the
// marginal likelihood over a small grid) to it, and evaluates the random candidate of highest
// expected improvement.
class BayesMo final : public Algorithm {
public:
	BayesMo(size_t n, const std::map<std::string, double>& settings, uint64_t seed) : n_(n), draws_(seed, "bayes_mo") {
		check_settings(settings, "bayes_mo", {"initial", "candidates", "batch"});
		initial_ = static_cast<size_t>(setting(settings, "initial", static_cast<double>(2 * n + 2), 2, 1e6));
		candidates_ = static_cast<size_t>(setting(settings, "candidates", 2048, 1, 1e7));
		batch_ = static_cast<size_t>(setting(settings, "batch", 4, 1, 1000));
	}

	std::vector<std::vector<double>> ask(uint64_t left) override {
		std::vector<std::vector<double>> out;
		if (seen_.empty()) {
			for (size_t k = 0; k < std::min<uint64_t>(initial_, left); ++k)
				out.push_back(random_point());
			return out;
		}
		for (size_t b = 0; b < std::min<uint64_t>(batch_, left); ++b)
			out.push_back(next_point());
		return out;
	}
	void tell(const std::vector<Evaluated>& results) override {
		seen_.insert(seen_.end(), results.begin(), results.end());
	}

private:
	std::vector<double> random_point() {
		std::vector<double> x(n_);
		for (auto& v : x)
			v = draws_.uniform();
		return x;
	}
	// Augmented Chebyshev scalarization of every seen point for a random λ, in [0, 1]-scaled objectives.
	std::vector<double> scalarized() {
		const size_t m = seen_.front().objectives.size();
		std::vector<double> lambda(m), lo(m, 1e300), hi(m, -1e300), out;
		double total = 0;
		for (auto& l : lambda)
			total += (l = -std::log(std::max(draws_.uniform(), 1e-300)));
		for (const auto& e : seen_)
			for (size_t j = 0; j < m; ++j)
				lo[j] = std::min(lo[j], e.objectives[j]), hi[j] = std::max(hi[j], e.objectives[j]);
		for (const auto& e : seen_) {
			double worst = 1e300, sum = 0;
			for (size_t j = 0; j < m; ++j) {
				const double scaled = hi[j] > lo[j] ? (e.objectives[j] - lo[j]) / (hi[j] - lo[j]) : 0.5;
				worst = std::min(worst, lambda[j] / total * scaled);
				sum += lambda[j] / total * scaled;
			}
			out.push_back(worst + 0.05 * sum);
		}
		return out;
	}
	double kernel(const std::vector<double>& a, const std::vector<double>& b, double length) const {
		double d = 0;
		for (size_t i = 0; i < n_; ++i)
			d += (a[i] - b[i]) * (a[i] - b[i]);
		return std::exp(-d / (2 * length * length));
	}
	std::vector<double> next_point() {
		auto y = scalarized();
		const size_t N = seen_.size();
		const double mean = std::accumulate(y.begin(), y.end(), 0.0) / static_cast<double>(N);
		double sd = 0;
		for (auto& v : y)
			sd += (v - mean) * (v - mean);
		sd = std::sqrt(sd / static_cast<double>(N)) + 1e-9;
		for (auto& v : y)
			v = (v - mean) / sd;
		// The lengthscale of highest marginal likelihood, and K⁻¹y for it.
		double best_ll = -1e300, length = 0.3;
		MatrixD alpha;
		for (double l : {0.1, 0.2, 0.3, 0.5, 0.8, 1.2}) {
			const double ls = l * std::sqrt(static_cast<double>(n_));
			MatrixD K(N, N), Y(N, 1);
			for (size_t i = 0; i < N; ++i) {
				Y(i, 0) = y[i];
				for (size_t j = 0; j < N; ++j)
					K(i, j) = kernel(seen_[i].genome, seen_[j].genome, ls) + (i == j ? 1e-4 : 0);
			}
			const auto a = linalg::solve_symmetric(K, Y);
			double fit = 0;
			for (size_t i = 0; i < N; ++i)
				fit += y[i] * a(i, 0);
			// −½ yᵀK⁻¹y − ½ log det K, with log det taken from the diagonal of K's SVD.
			const auto svd = linalg::svd(K);
			double logdet = 0;
			for (double s : svd.S)
				logdet += std::log(std::max(s, 1e-300));
			const double ll = -0.5 * fit - 0.5 * logdet;
			if (ll > best_ll) best_ll = ll, length = ls, alpha = a;
		}
		const double incumbent = *std::max_element(y.begin(), y.end());
		std::vector<double> pick;
		double best_ei = -1;
		MatrixD K(N, N);
		for (size_t i = 0; i < N; ++i)
			for (size_t j = 0; j < N; ++j)
				K(i, j) = kernel(seen_[i].genome, seen_[j].genome, length) + (i == j ? 1e-4 : 0);
		for (size_t c = 0; c < candidates_; ++c) {
			auto x = random_point();
			MatrixD k(N, 1);
			double mu = 0;
			for (size_t i = 0; i < N; ++i)
				mu += (k(i, 0) = kernel(x, seen_[i].genome, length)) * alpha(i, 0);
			if (c % 16 != 0 && mu < incumbent - 3) continue; // far below: not worth a variance solve
			const auto v = linalg::solve_symmetric(K, k);
			double var = 1;
			for (size_t i = 0; i < N; ++i)
				var -= k(i, 0) * v(i, 0);
			const double s = std::sqrt(std::max(var, 1e-12)), z = (mu - incumbent) / s;
			const double ei = (mu - incumbent) * 0.5 * std::erfc(-z / std::sqrt(2.0)) +
			                  s * std::exp(-z * z / 2) / std::sqrt(2 * M_PI);
			if (ei > best_ei) best_ei = ei, pick = x;
		}
		return pick.empty() ? random_point() : pick;
	}

	size_t n_, initial_ = 8, candidates_ = 2048, batch_ = 4;
	Draws draws_;
	std::vector<Evaluated> seen_;
};

// --- sweep ---

class Sweep final : public Algorithm {
public:
	Sweep(size_t n, const std::map<std::string, double>& settings) {
		check_settings(settings, "sweep", {"steps"});
		const auto steps = static_cast<int>(setting(settings, "steps", 4, 1, 1000));
		std::vector<int> parts(n, 0);
		compositions(parts, 0, steps, steps);
	}
	std::vector<std::vector<double>> ask(uint64_t left) override {
		std::vector<std::vector<double>> out;
		while (next_ < points_.size() && out.size() < std::min<uint64_t>(left, 16))
			out.push_back(points_[next_++]);
		return out;
	}
	void tell(const std::vector<Evaluated>&) override {}

private:
	// Every way to split `left` of `steps` over parts[i..]: the simplex grid, in lexicographic order.
	void compositions(std::vector<int>& parts, size_t i, int left, int steps) {
		if (i + 1 == parts.size()) {
			parts[i] = left;
			std::vector<double> x;
			for (int p : parts)
				x.push_back(static_cast<double>(p) / steps);
			points_.push_back(x);
			if (points_.size() > 1'000'000) throw Error("sweep: more than a million grid points; lower steps");
			return;
		}
		for (int p = left; p >= 0; --p) {
			parts[i] = p;
			compositions(parts, i + 1, left - p, steps);
		}
	}
	std::vector<std::vector<double>> points_;
	size_t next_ = 0;
};

} // namespace

std::vector<size_t> pareto_front(const std::vector<std::vector<double>>& points) {
	std::vector<size_t> front;
	for (size_t i = 0; i < points.size(); ++i) {
		bool dominated = false;
		for (size_t k = 0; k < points.size() && !dominated; ++k) {
			if (k == i) continue;
			bool all = true, some = false;
			for (size_t j = 0; j < points[i].size(); ++j) {
				all = all && points[k][j] >= points[i][j];
				some = some || points[k][j] > points[i][j];
			}
			dominated = all && some;
		}
		if (!dominated) front.push_back(i);
	}
	return front;
}

std::unique_ptr<Algorithm> make_algorithm(const std::string& name, const std::map<std::string, double>& settings,
                                          size_t genes, const std::vector<double>& objective_weights, uint64_t seed,
                                          uint64_t budget) {
	if (genes == 0) throw Error("search: nothing to search");
	if (name == "cma_es") return std::make_unique<CmaEs>(genes, settings, seed);
	if (name == "m2n2") return std::make_unique<M2n2>(genes, settings, seed);
	if (name == "map") return std::make_unique<Map>(genes, settings, objective_weights, seed, budget);
	if (name == "sweep") return std::make_unique<Sweep>(genes, settings);
	if (name == "bayes_mo") return std::make_unique<BayesMo>(genes, settings, seed);
	throw Error(fmt::format("unknown search algorithm '{}'", name));
}

} // namespace weld::search
