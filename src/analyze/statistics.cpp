#include "analyze/statistics.h"

#include "linalg/linalg.h"

#include <algorithm>
#include <cmath>
#include <functional>

namespace weld::analyze {
namespace {

// Path components of a tensor name ("model.layers.3.mlp.up_proj.weight").
std::vector<std::string_view> split_name(std::string_view name) {
	std::vector<std::string_view> parts;
	for (size_t start = 0;;) {
		const size_t dot = name.find('.', start);
		parts.push_back(name.substr(start, dot - start));
		if (dot == std::string_view::npos) return parts;
		start = dot + 1;
	}
}

bool is_number(std::string_view s) {
	return !s.empty() && s.size() < 9 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

double ratio(double num, double den) {
	return den > 0 ? num / den : 0;
}

// Each model's top-k entries by |τ| (ties: the first in index order, as TopKSelection keeps).
std::vector<uint8_t> top_k_mask(const std::vector<float>& delta, uint64_t k) {
	std::vector<float> magnitudes(delta.size());
	for (size_t j = 0; j < delta.size(); j++)
		magnitudes[j] = std::abs(delta[j]);
	std::vector<float> sorted = magnitudes;
	std::nth_element(sorted.begin(), sorted.begin() + static_cast<ptrdiff_t>(k - 1), sorted.end(), std::greater<>());
	const float threshold = sorted[k - 1];
	uint64_t above = 0;
	for (float m : magnitudes)
		above += m > threshold;
	uint64_t ties_left = k - above;
	std::vector<uint8_t> mask(delta.size(), 0);
	for (size_t j = 0; j < delta.size(); j++) {
		if (magnitudes[j] > threshold)
			mask[j] = 1;
		else if (magnitudes[j] == threshold && ties_left > 0) {
			mask[j] = 1;
			ties_left--;
		}
	}
	return mask;
}

void add_sign_statistics(const std::vector<std::vector<float>>& deltas, Sums& s) {
	const size_t n = deltas.empty() ? 0 : deltas[0].size();
	for (size_t j = 0; j < n; j++) {
		bool positive = false, negative = false;
		double sum = 0;
		for (const auto& d : deltas) {
			positive |= d[j] > 0;
			negative |= d[j] < 0;
			sum += d[j];
		}
		s.sign_conflicts += positive && negative;
		const double elected = sum > 0 ? 1 : sum < 0 ? -1 : 0;
		for (const auto& d : deltas) {
			const double a = std::abs(static_cast<double>(d[j]));
			s.abs_sum += a;
			if (d[j] != 0 && (d[j] > 0 ? 1.0 : -1.0) != elected) s.election_dropped += a;
		}
	}
}

void add_top_k_statistics(const std::vector<std::vector<float>>& deltas, Sums& s) {
	const size_t n = deltas.empty() ? 0 : deltas[0].size();
	if (n == 0) return;
	const auto k = std::max<uint64_t>(1, static_cast<uint64_t>(std::floor(static_cast<double>(n) * kTopKFraction)));
	s.top_k = k;
	std::vector<std::vector<uint8_t>> masks;
	for (const auto& d : deltas)
		masks.push_back(top_k_mask(d, k));
	for (size_t a = 0; a < masks.size(); a++)
		for (size_t b = a; b < masks.size(); b++) {
			uint64_t shared = 0;
			for (size_t j = 0; j < n; j++)
				shared += masks[a][j] & masks[b][j];
			s.top_k_shared[a][b] = s.top_k_shared[b][a] = shared;
		}
}

void add_spectrum_statistics(const std::vector<std::vector<float>>& deltas, uint64_t rows, uint64_t cols,
                             TensorStats& t) {
	const size_t models = deltas.size();
	const uint64_t full_rank = std::min(rows, cols);
	t.kept_rank = std::max<uint64_t>(1, full_rank / std::max<size_t>(1, models));
	t.sums.matrices = 1;
	for (size_t i = 0; i < models; i++) {
		linalg::MatrixD m(rows, cols);
		std::copy(deltas[i].begin(), deltas[i].end(), m.data.begin());
		const auto sigma = linalg::singular_values(m);
		t.sums.effective_rank_sum[i] = effective_rank(sigma);
		t.sums.top_rank_energy_sum[i] = energy_in_top(sigma, t.kept_rank);
		for (int p = 0; p < kCurvePoints; p++) {
			const auto rank = static_cast<uint64_t>(
			    std::ceil(static_cast<double>(full_rank) * p / static_cast<double>(kCurvePoints - 1)));
			t.sums.energy_curve_sum[i][p] = energy_in_top(sigma, rank);
		}
	}
}

} // namespace

TensorPlace place_of(std::string_view tensor_name) {
	const auto parts = split_name(tensor_name);
	TensorPlace place;
	for (size_t k = 0; k + 1 < parts.size(); k++)
		if (is_number(parts[k + 1]) && (parts[k] == "layers" || parts[k] == "h" || parts[k] == "blocks")) {
			place.layer = std::stoi(std::string(parts[k + 1]));
			break;
		}
	const bool parameter_suffix = parts.size() > 1 && (parts.back() == "weight" || parts.back() == "bias");
	place.module = std::string(parameter_suffix ? parts[parts.size() - 2] : parts.back());
	return place;
}

Sums::Sums(size_t models)
    : dot(models, std::vector<double>(models, 0)), top_k_shared(models, std::vector<uint64_t>(models, 0)),
      effective_rank_sum(models, 0), top_rank_energy_sum(models, 0),
      energy_curve_sum(models, std::vector<double>(kCurvePoints, 0)) {}

void Sums::add(const Sums& o) {
	elements += o.elements;
	base_sq += o.base_sq;
	sign_conflicts += o.sign_conflicts;
	abs_sum += o.abs_sum;
	election_dropped += o.election_dropped;
	top_k += o.top_k;
	matrices += o.matrices;
	for (size_t i = 0; i < dot.size(); i++) {
		for (size_t j = 0; j < dot.size(); j++) {
			dot[i][j] += o.dot[i][j];
			top_k_shared[i][j] += o.top_k_shared[i][j];
		}
		effective_rank_sum[i] += o.effective_rank_sum[i];
		top_rank_energy_sum[i] += o.top_rank_energy_sum[i];
		for (int p = 0; p < kCurvePoints; p++)
			energy_curve_sum[i][p] += o.energy_curve_sum[i][p];
	}
}

double Sums::relative_norm(size_t i) const {
	return base_sq > 0 ? std::sqrt(dot[i][i] / base_sq) : 0;
}

double Sums::cosine(size_t i, size_t j) const {
	return ratio(dot[i][j], std::sqrt(dot[i][i] * dot[j][j]));
}

double Sums::sign_conflict_rate() const {
	return ratio(static_cast<double>(sign_conflicts), static_cast<double>(elements));
}

double Sums::election_drop_rate() const {
	return ratio(election_dropped, abs_sum);
}

double Sums::top_k_jaccard(size_t i, size_t j) const {
	const auto shared = static_cast<double>(top_k_shared[i][j]);
	return ratio(shared, 2 * static_cast<double>(top_k) - shared);
}

double Sums::mean_effective_rank(size_t i) const {
	return ratio(effective_rank_sum[i], static_cast<double>(matrices));
}

double Sums::mean_top_rank_energy(size_t i) const {
	return ratio(top_rank_energy_sum[i], static_cast<double>(matrices));
}

double effective_rank(std::span<const double> sigma) {
	double total = 0;
	for (double s : sigma)
		total += s;
	if (total <= 0) return 0;
	double entropy = 0;
	for (double s : sigma)
		if (s > 0) entropy -= (s / total) * std::log(s / total);
	return std::exp(entropy);
}

double energy_in_top(std::span<const double> sigma, uint64_t rank) {
	double total = 0, top = 0;
	for (size_t k = 0; k < sigma.size(); k++) {
		total += sigma[k] * sigma[k];
		if (k < rank) top += sigma[k] * sigma[k];
	}
	return ratio(top, total);
}

TensorStats analyze_tensor(std::string name, std::vector<uint64_t> shape, std::span<const float> base,
                           const std::vector<std::span<const float>>& models) {
	TensorStats t;
	t.place = place_of(name);
	t.name = std::move(name);
	t.shape = std::move(shape);
	t.sums = Sums(models.size());
	Sums& s = t.sums;
	s.elements = base.size();
	std::vector<std::vector<float>> deltas(models.size(), std::vector<float>(base.size()));
	for (size_t j = 0; j < base.size(); j++) {
		s.base_sq += static_cast<double>(base[j]) * base[j];
		for (size_t i = 0; i < models.size(); i++)
			deltas[i][j] = models[i][j] - base[j];
	}
	for (size_t a = 0; a < models.size(); a++)
		for (size_t b = a; b < models.size(); b++) {
			double dot = 0;
			for (size_t j = 0; j < base.size(); j++)
				dot += static_cast<double>(deltas[a][j]) * deltas[b][j];
			s.dot[a][b] = s.dot[b][a] = dot;
		}
	add_sign_statistics(deltas, s);
	add_top_k_statistics(deltas, s);
	if (t.shape.size() == 2 && t.shape[0] > 0 && t.shape[1] > 0)
		add_spectrum_statistics(deltas, t.shape[0], t.shape[1], t);
	return t;
}

} // namespace weld::analyze
