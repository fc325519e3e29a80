#include "nn/twin.h"

#include "io/json.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <cstring>

namespace weld::nn {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr size_t kFeatureBatch = 64;

std::string shape_text(at::IntArrayRef shape) {
	return fmt::format("[{}]", fmt::join(shape, ", "));
}

// The float32 tensors of twin.safetensors, checked against the shapes twin.json implies.
class TwinTensors {
public:
	explicit TwinTensors(const fs::path& path) : file_(path) {}
	at::Tensor get(const std::string& name, std::vector<int64_t> shape) const {
		const auto* info = file_.find(name);
		const auto where = fmt::format("{}: tensor {}", show(file_.path()), quote_for_message(name));
		if (!info) throw Error(fmt::format("{} is missing", where));
		if (info->dtype != DType::F32)
			throw Error(fmt::format("{} is {}, expected F32", where, dtype_safetensors_name(info->dtype)));
		std::vector<int64_t> actual(info->shape.begin(), info->shape.end());
		if (actual != shape)
			throw Error(fmt::format("{} has shape {}, expected {}", where, shape_text(actual), shape_text(shape)));
		auto out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
		const auto bytes = file_.data(*info);
		if (!bytes.empty()) std::memcpy(out.data_ptr(), bytes.data(), bytes.size());
		return out;
	}

private:
	SafetensorsFile file_;
};

int64_t positive_int(const json& j, const char* key, const std::string& label) {
	auto it = j.find(key);
	if (it == j.end()) throw Error(fmt::format("{}: '{}' is missing", show(label), key));
	if (!it->is_number_integer() || it->get<int64_t>() <= 0)
		throw Error(fmt::format("{}: '{}' must be a positive integer", show(label), key));
	return it->get<int64_t>();
}

} // namespace

bool is_twin_folder(const fs::path& dir) {
	std::error_code ec;
	return fs::is_regular_file(dir / "twin.json", ec);
}

at::Tensor TwinRouter::forward(const at::Tensor& features) const {
	auto x = features;
	for (size_t l = 0; l < weights.size(); ++l) {
		x = at::linear(x, weights[l], biases[l]);
		if (l + 1 < weights.size()) x = at::leaky_relu(x, 0.01);
	}
	return x;
}

at::Tensor mean_final_hidden(const LlamaModel& model, const std::vector<std::vector<int64_t>>& sequences) {
	const at::NoGradGuard no_grad;
	std::vector<at::Tensor> rows;
	for (size_t first = 0; first < sequences.size(); first += kFeatureBatch) {
		const size_t n = std::min(kFeatureBatch, sequences.size() - first);
		const std::vector<std::vector<int64_t>> chunk(sequences.begin() + static_cast<std::ptrdiff_t>(first),
		                                              sequences.begin() + static_cast<std::ptrdiff_t>(first + n));
		for (const auto& s : chunk)
			if (s.empty()) throw Error("twin routing: an empty sequence has no features");
		std::vector<at::Tensor> hidden;
		model.forward(right_padded_ids(chunk), &hidden);
		const auto last = hidden.back().to(at::kFloat); // [n, longest, hidden]
		for (size_t b = 0; b < n; ++b)
			rows.push_back(last[static_cast<int64_t>(b)].slice(0, 0, static_cast<int64_t>(chunk[b].size())).mean(0));
	}
	if (rows.empty()) return at::empty({0, model.config().hidden_size}, at::TensorOptions().dtype(at::kFloat));
	return at::stack(rows);
}

TwinModel TwinModel::load(const fs::path& dir, at::ScalarType dtype) {
	const auto json_path = dir / "twin.json";
	const auto label = json_path.string();
	if (!fs::is_regular_file(json_path)) throw Error(fmt::format("{}: no such file", show(json_path)));
	const json j = parse_json_object(read_text_file(json_path), label);
	if (j.value("format", json()) != "weld-twin")
		throw Error(fmt::format("{}: 'format' must be \"weld-twin\"", show(label)));
	if (j.value("version", json()) != 1) throw Error(fmt::format("{}: 'version' must be 1", show(label)));
	const int64_t k = positive_int(j, "experts", label);

	auto shared = LlamaModel::load(dir, dtype);
	auto merged = shared; // shares the tensors until model_for replaces them
	TwinModel m(std::move(shared), std::move(merged));

	const auto names = j.find("expert_names");
	if (names == j.end() || !names->is_array() || static_cast<int64_t>(names->size()) != k)
		throw Error(fmt::format("{}: 'expert_names' must be a list of {} names", show(label), k));
	for (const auto& n : *names) {
		if (!n.is_string()) throw Error(fmt::format("{}: 'expert_names' must be a list of strings", show(label)));
		m.expert_names_.push_back(n.get<std::string>());
	}

	const auto compute = dtype == at::kDouble ? at::kDouble : at::kFloat;
	m.compute_ = compute;
	const TwinTensors tensors(dir / "twin.safetensors");
	const auto ranks = j.find("ranks");
	if (ranks == j.end() || !ranks->is_object())
		throw Error(fmt::format("{}: 'ranks' must be an object of tensor names and ranks", show(label)));
	for (const auto& [name, value] : ranks->items()) {
		const auto where = fmt::format("{}: ranks: tensor {}", show(label), quote_for_message(name));
		const auto it = m.shared_.parameters().find(name);
		if (it == m.shared_.parameters().end()) throw Error(fmt::format("{}: the model has no such tensor", where));
		if (!value.is_number_integer() || value.get<int64_t>() < 0)
			throw Error(fmt::format("{}: the rank must be a non-negative integer", where));
		Factors f;
		f.name = name;
		f.rank = value.get<int64_t>();
		const auto shape = it->second.sizes().vec();
		if (f.rank > 0) {
			if (shape.size() != 2 || f.rank > std::min(shape[0], shape[1]))
				throw Error(fmt::format("{}: rank {} does not fit shape {}", where, f.rank, shape_text(shape)));
			std::vector<at::Tensor> us, vs;
			for (int64_t i = 0; i < k; ++i) {
				us.push_back(tensors.get(fmt::format("{}.twin{}.u", name, i), {shape[0], f.rank}));
				vs.push_back(tensors.get(fmt::format("{}.twin{}.v", name, i), {f.rank, shape[1]}));
			}
			f.u = at::cat(us, 1).to(compute);
			f.v = at::cat(vs, 0).to(compute);
		} else {
			std::vector<at::Tensor> ds;
			for (int64_t i = 0; i < k; ++i)
				ds.push_back(tensors.get(fmt::format("{}.twin{}.delta", name, i), shape).reshape({-1}));
			f.delta = at::stack(ds).to(compute);
		}
		m.factors_.push_back(std::move(f));
	}

	const auto layers = j.find("router_layers");
	if (layers == j.end() || !layers->is_array() || layers->size() < 2)
		throw Error(fmt::format("{}: 'router_layers' must be a list of two or more sizes", show(label)));
	std::vector<int64_t> sizes;
	for (const auto& s : *layers) {
		if (!s.is_number_integer() || s.get<int64_t>() <= 0)
			throw Error(fmt::format("{}: 'router_layers' must hold positive integers", show(label)));
		sizes.push_back(s.get<int64_t>());
	}
	if (sizes.front() != m.config().hidden_size || sizes.back() != k)
		throw Error(fmt::format("{}: 'router_layers' must go from hidden_size {} to {} experts, not {}", show(label),
		                        m.config().hidden_size, k, shape_text(sizes)));
	for (size_t l = 0; l + 1 < sizes.size(); ++l) {
		m.router_.weights.push_back(tensors.get(fmt::format("router.{}.weight", l), {sizes[l + 1], sizes[l]}));
		m.router_.biases.push_back(tensors.get(fmt::format("router.{}.bias", l), {sizes[l + 1]}));
	}
	return m;
}

at::Tensor TwinModel::route(const std::vector<int64_t>& ids) const {
	return route(std::vector<std::vector<int64_t>>{ids})[0];
}

at::Tensor TwinModel::route(const std::vector<std::vector<int64_t>>& sequences) const {
	const at::NoGradGuard no_grad;
	return at::softmax(router_.forward(mean_final_hidden(shared_, sequences)), -1);
}

const LlamaModel& TwinModel::model_for(const at::Tensor& weights) {
	if (weights.dim() != 1 || weights.size(0) != static_cast<int64_t>(experts()))
		throw Error(
		    fmt::format("twin: expected {} expert weights, got shape {}", experts(), shape_text(weights.sizes())));
	const at::NoGradGuard no_grad;
	const auto w = weights.detach().to(compute_);
	if (current_.defined() && at::equal(current_, w)) return merged_;
	std::map<std::string, at::Tensor> values;
	for (const auto& f : factors_) {
		const auto& base = shared_.parameter(f.name);
		at::Tensor e;
		if (f.rank > 0)
			e = at::matmul(f.u * w.repeat_interleave(f.rank), f.v);
		else
			e = at::matmul(w, f.delta).view(base.sizes());
		values[f.name] = (base.to(e.scalar_type()) + e).to(base.scalar_type());
	}
	merged_.replace_parameters(values);
	current_ = w.clone();
	return merged_;
}

} // namespace weld::nn
