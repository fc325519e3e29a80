#include "lora/rmm_folder.h"

#include "io/model.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "lora/extract.h"
#include "lora/rmm.h"
#include "lora/weighted_adapter.h"
#include "tensor/convert.h"
#include "tensor/kernels.h"
#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>

namespace weld::lora {
namespace {

constexpr const char* kJsonFile = "rmm.json";
constexpr const char* kBasisFile = "rmm_basis.safetensors";

bool is_adapter_folder(const std::string& input) {
	return std::filesystem::exists(std::filesystem::path(input) / "adapter_config.json");
}

// The 2-D weights a fine-tune's update is compressed on: not the embeddings or the output head,
// which mergekit-extract-lora also treats apart.
bool compressible(const TensorInfo& info) {
	return info.shape.size() == 2 && info.name.ends_with(".weight") &&
	       info.name.find("embed_tokens") == std::string::npos && info.name.find("lm_head") == std::string::npos;
}

linalg::MatrixD read_matrix(const ModelFolder::Tensor& t) {
	linalg::MatrixD m(t.info->shape[0], t.info->shape[1]);
	std::vector<float> values(t.info->numel());
	convert_to_f32(t.info->dtype, t.file->data(*t.info).data(), values.data(), values.size());
	std::copy(values.begin(), values.end(), m.data.begin());
	return m;
}

// Every input has the same modules, each of one shape and rank, plain LoRA factors only.
void check_inputs(const std::vector<PeftAdapter>& inputs) {
	const PeftAdapter& first = inputs.front();
	for (const auto& input : inputs) {
		if (!input.saved.empty())
			throw Error(
			    fmt::format("input {}: modules_to_save are not low-rank; RMM cannot hold them", input.dir.string()));
		if (input.modules.size() != first.modules.size())
			throw Error(fmt::format("inputs {} and {} adapt different modules ({} and {}); RMM needs the same ones",
			                        first.dir.string(), input.dir.string(), first.modules.size(),
			                        input.modules.size()));
		for (const auto& m : first.modules) {
			const LoraModule* other = input.find(m.name);
			if (!other)
				throw Error(
				    fmt::format("input {} lacks module '{}' of {}", input.dir.string(), m.name, first.dir.string()));
			if (other->rank != m.rank || other->in_features != m.in_features || other->out_features != m.out_features ||
			    other->embedding != m.embedding)
				throw Error(fmt::format("module '{}': input {} has rank {} on [{}, {}] but {} has rank {} on [{}, {}]; "
				                        "RMM needs one shape and rank per module",
				                        m.name, first.dir.string(), m.rank, m.out_features, m.in_features,
				                        input.dir.string(), other->rank, other->out_features, other->in_features));
			if (!other->bias.empty())
				throw Error(fmt::format("input {}: module '{}' has a lora_B bias, which RMM does not hold",
				                        input.dir.string(), m.name));
		}
	}
}

PeftAdapter read_input(const std::string& input, const RmmBuildOptions& options, double* compression_error) {
	if (is_adapter_folder(input)) return read_peft_adapter(input);
	if (!options.base || !options.svd_rank)
		throw Error(fmt::format("input {} is not an adapter folder (no adapter_config.json); a fine-tuned model "
		                        "needs --base and --svd-rank",
		                        input));
	return compress_fine_tune(resolve_model_reference(input), resolve_model_reference(options.base->string()),
	                          *options.svd_rank, compression_error);
}

nlohmann::ordered_json matrix_json(const linalg::MatrixD& m) {
	auto rows = nlohmann::ordered_json::array();
	for (size_t r = 0; r < m.rows; ++r) {
		auto row = nlohmann::ordered_json::array();
		for (size_t c = 0; c < m.cols; ++c)
			row.push_back(m(r, c));
		rows.push_back(row);
	}
	return rows;
}

struct ModuleFit {
	FactorBasis a, b;
};

ModuleFit fit_module(const std::vector<PeftAdapter>& inputs, const LoraModule& m, size_t rank) {
	std::vector<std::span<const float>> a_tasks, b_tasks;
	for (const auto& input : inputs) {
		a_tasks.emplace_back(input.find(m.name)->a);
		b_tasks.emplace_back(input.find(m.name)->b);
	}
	return {fit_factor_basis(a_tasks, rank), fit_factor_basis(b_tasks, rank)};
}

// Per input, ‖ΔŴ − ΔW‖_F² and ‖ΔW‖_F² summed over the modules.
struct ErrorSums {
	std::vector<double> distance, norm;
};

// The module's entry of rmm.json; adds its errors to `sums` and the inputs' worst modules.
nlohmann::ordered_json module_json(const std::vector<PeftAdapter>& inputs, const LoraModule& m, const ModuleFit& fit,
                                   ErrorSums& sums, std::vector<RmmInputReport>& reports) {
	nlohmann::ordered_json errors = nlohmann::ordered_json::array(), scalings = errors;
	for (size_t i = 0; i < inputs.size(); ++i) {
		const LoraFactors original = factors_of(*inputs[i].find(m.name));
		LoraFactors reverted = original;
		reverted.a.data = reconstruct_factor(fit.a, i);
		reverted.b.data = reconstruct_factor(fit.b, i);
		const double d = update_distance_squared(original, reverted), w = update_norm_squared(original);
		sums.distance[i] += d;
		sums.norm[i] += w;
		const double relative = w > 0 ? std::sqrt(d / w) : 0.0;
		errors.push_back(relative);
		scalings.push_back(original.scaling);
		if (relative >= reports[i].worst_module_error) {
			reports[i].worst_module_error = relative;
			reports[i].worst_module = m.name;
		}
	}
	return {{"name", m.name},
	        {"embedding", m.embedding},
	        {"rank", m.rank},
	        {"in_features", m.in_features},
	        {"out_features", m.out_features},
	        {"scaling", scalings},
	        {"coefficients_A", matrix_json(fit.a.coefficients)},
	        {"coefficients_B", matrix_json(fit.b.coefficients)},
	        {"reconstruction_error", errors}};
}

nlohmann::ordered_json input_json(const RmmInputReport& report, const PeftAdapter& input) {
	nlohmann::ordered_json entry{{"path", report.path},
	                             {"kind", report.compression_error ? "model" : "adapter"},
	                             {"config", nlohmann::ordered_json::parse(peft_config_json(input.config))},
	                             {"reconstruction_error", report.reconstruction_error},
	                             {"worst_module", report.worst_module},
	                             {"worst_module_error", report.worst_module_error}};
	if (report.compression_error) entry["compression_error"] = *report.compression_error;
	return entry;
}

// Writes the bases as float32 tensors, [K, r, in] and [K, out, r] per module.
void write_basis(const std::filesystem::path& dir, const std::vector<LoraModule>& modules,
                 const std::vector<ModuleFit>& fits, size_t rank) {
	std::vector<OutputTensorSpec> specs;
	for (const auto& m : modules) {
		specs.push_back({m.name + ".lora_A.basis", DType::F32, {rank, m.rank, m.in_features}});
		specs.push_back({m.name + ".lora_B.basis", DType::F32, {rank, m.out_features, m.rank}});
	}
	SafetensorsWriter writer(dir, specs, UINT64_MAX);
	for (size_t i = 0; i < modules.size(); ++i) {
		for (const FactorBasis* fit : {&fits[i].a, &fits[i].b}) {
			std::vector<float> joined;
			for (const auto& phi : fit->basis)
				joined.insert(joined.end(), phi.begin(), phi.end());
			const auto* bytes = reinterpret_cast<const uint8_t*>(joined.data());
			writer.write(2 * i + (fit == &fits[i].b), {bytes, joined.size() * sizeof(float)});
		}
	}
	writer.finish();
	std::filesystem::rename(dir / "model.safetensors", dir / kBasisFile);
}

nlohmann::ordered_json read_json(const std::filesystem::path& path) {
	try {
		return nlohmann::ordered_json::parse(read_text_file(path));
	} catch (const std::exception& e) {
		throw Error(fmt::format("{}: not an RMM folder's rmm.json: {}", path.string(), e.what()));
	}
}

std::vector<float> read_basis_tensor(const SafetensorsFile& file, const std::string& name,
                                     const std::vector<uint64_t>& shape) {
	const TensorInfo* info = file.find(name);
	if (!info || info->shape != shape)
		throw Error(
		    fmt::format("{}: tensor '{}' is missing or not of the shape rmm.json gives", file.path().string(), name));
	std::vector<float> values(info->numel());
	convert_to_f32(info->dtype, file.data(*info).data(), values.data(), values.size());
	return values;
}

// Task `index`'s factor: Σ_k c_k φ_k over the K basis tensors stored back to back.
std::vector<float> combine_basis(const std::vector<float>& basis, const nlohmann::ordered_json& coefficients,
                                 size_t rank) {
	const size_t size = basis.size() / rank;
	std::vector<double> sum(size, 0.0);
	for (size_t k = 0; k < rank; ++k) {
		const double c = coefficients.at(k).get<double>();
		for (size_t p = 0; p < size; ++p)
			sum[p] += c * basis[k * size + p];
	}
	return {sum.begin(), sum.end()};
}

RmmInputReport report_of(const nlohmann::ordered_json& input) {
	RmmInputReport r;
	r.path = input.at("path").get<std::string>();
	r.reconstruction_error = input.at("reconstruction_error").get<double>();
	if (input.contains("compression_error")) r.compression_error = input["compression_error"].get<double>();
	r.worst_module = input.at("worst_module").get<std::string>();
	r.worst_module_error = input.at("worst_module_error").get<double>();
	return r;
}

} // namespace

PeftAdapter compress_fine_tune(const std::filesystem::path& model_dir, const std::filesystem::path& base_dir,
                               size_t rank, double* compression_error) {
	const ModelFolder model(model_dir), base(base_dir);
	PeftAdapter adapter;
	adapter.dir = model_dir;
	adapter.config.r = static_cast<int64_t>(rank);
	adapter.config.lora_alpha = static_cast<double>(rank);
	adapter.config.base_model_name_or_path = base_dir.string();
	double error = 0, norm = 0;
	for (const auto& t : base.tensors()) {
		if (!compressible(*t.info)) continue;
		const ModelFolder::Tensor* tuned = model.find(t.info->name);
		if (!tuned || tuned->info->shape != t.info->shape)
			throw Error(fmt::format("model {}: tensor '{}' is missing or not shaped as in base {}", model_dir.string(),
			                        t.info->name, base_dir.string()));
		linalg::MatrixD delta = read_matrix(*tuned);
		const linalg::MatrixD base_weight = read_matrix(t);
		for (size_t j = 0; j < delta.data.size(); ++j)
			delta.data[j] -= base_weight.data[j];
		const std::string name = t.info->name.substr(0, t.info->name.size() - std::string(".weight").size());
		LoraModule like;
		like.name = name;
		if (rank > std::min(delta.rows, delta.cols))
			throw Error(fmt::format("--svd-rank {} exceeds the smaller dimension of tensor '{}' ({})", rank,
			                        t.info->name, std::min(delta.rows, delta.cols)));
		// As weld extract-lora cuts it: A = √S Vᵀ, B = U √S, randomized for large matrices.
		linalg::MatrixF delta_f(delta.rows, delta.cols);
		std::copy(delta.data.begin(), delta.data.end(), delta_f.data.begin());
		const ExtractedFactors cut_factors = decompose_task_vector(
		    delta_f, static_cast<int64_t>(rank), 0, true, LoraSvd::Auto, random_stream_key(0, t.info->name, 0));
		LoraFactors factors{linalg::MatrixF(cut_factors.rank, delta.cols),
		                    linalg::MatrixF(delta.rows, cut_factors.rank), 1.0};
		factors.a.data = cut_factors.a;
		factors.b.data = cut_factors.b;
		const linalg::MatrixD cut = delta_weight(factors);
		for (size_t j = 0; j < delta.data.size(); ++j) {
			error += (cut.data[j] - delta.data[j]) * (cut.data[j] - delta.data[j]);
			norm += delta.data[j] * delta.data[j];
		}
		adapter.modules.push_back(module_of(factors, like));
		adapter.config.target_modules.push_back(name);
	}
	if (adapter.modules.empty()) throw Error(fmt::format("base {} has no 2-D weights to compress", base_dir.string()));
	if (compression_error) *compression_error = norm > 0 ? std::sqrt(error / norm) : 0.0;
	return adapter;
}

std::vector<RmmInputReport> build_rmm(const std::vector<std::string>& input_paths, const std::filesystem::path& out,
                                      const RmmBuildOptions& options) {
	if (input_paths.empty()) throw Error("rmm build needs at least one input");
	if (options.rank == 0 || options.rank > input_paths.size())
		throw Error(
		    fmt::format("--rank {} must be between 1 and the number of inputs ({})", options.rank, input_paths.size()));
	std::vector<PeftAdapter> inputs;
	std::vector<RmmInputReport> reports(input_paths.size());
	for (size_t i = 0; i < input_paths.size(); ++i) {
		double compression = 0;
		inputs.push_back(read_input(input_paths[i], options, &compression));
		reports[i].path = input_paths[i];
		if (!is_adapter_folder(input_paths[i])) reports[i].compression_error = compression;
	}
	check_inputs(inputs);

	const size_t n = inputs.size(), rank = options.rank;
	nlohmann::ordered_json modules = nlohmann::ordered_json::array();
	std::vector<ModuleFit> fits;
	ErrorSums sums{std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
	for (const auto& m : inputs.front().modules) {
		fits.push_back(fit_module(inputs, m, rank));
		modules.push_back(module_json(inputs, m, fits.back(), sums, reports));
	}
	nlohmann::ordered_json doc{{"format", "weld-rmm"}, {"version", 1}, {"rank", rank}};
	auto& input_list = doc["inputs"] = nlohmann::ordered_json::array();
	for (size_t i = 0; i < n; ++i) {
		reports[i].reconstruction_error = sums.norm[i] > 0 ? std::sqrt(sums.distance[i] / sums.norm[i]) : 0.0;
		input_list.push_back(input_json(reports[i], inputs[i]));
	}
	doc["modules"] = modules;
	write_folder_atomically(out, options.force, [&](const std::filesystem::path& dir) {
		write_basis(dir, inputs.front().modules, fits, rank);
		write_text_file(dir / kJsonFile, doc.dump(1) + "\n");
	});
	return reports;
}

RmmInputReport revert_rmm(const std::filesystem::path& rmm_dir, size_t index, const std::filesystem::path& dest,
                          bool force) {
	const auto json_path = rmm_dir / kJsonFile;
	const auto doc = read_json(json_path);
	try {
		if (doc.value("format", "") != "weld-rmm")
			throw Error(
			    fmt::format("{}: not an RMM folder's rmm.json (no \"format\": \"weld-rmm\")", json_path.string()));
		const auto& inputs = doc.at("inputs");
		if (index >= inputs.size())
			throw Error(fmt::format("{}: input {} does not exist; the basis holds inputs 0 to {}", rmm_dir.string(),
			                        index, inputs.size() - 1));
		const auto rank = doc.at("rank").get<size_t>();
		const SafetensorsFile basis(rmm_dir / kBasisFile);
		const auto config = parse_peft_config(inputs[index].at("config").dump(), json_path.string());
		std::vector<LoraModule> modules;
		for (const auto& m : doc.at("modules")) {
			LoraModule module;
			module.name = m.at("name").get<std::string>();
			module.embedding = m.at("embedding").get<bool>();
			module.rank = m.at("rank").get<uint64_t>();
			module.in_features = m.at("in_features").get<uint64_t>();
			module.out_features = m.at("out_features").get<uint64_t>();
			module.scaling = m.at("scaling").at(index).get<double>();
			module.a = combine_basis(
			    read_basis_tensor(basis, module.name + ".lora_A.basis", {rank, module.rank, module.in_features}),
			    m.at("coefficients_A").at(index), rank);
			module.b = combine_basis(
			    read_basis_tensor(basis, module.name + ".lora_B.basis", {rank, module.out_features, module.rank}),
			    m.at("coefficients_B").at(index), rank);
			modules.push_back(std::move(module));
		}
		write_folder_atomically(dest, force, [&](const std::filesystem::path& dir) {
			write_peft_adapter(dir, config, modules, DType::F32);
		});
		return report_of(inputs[index]);
	} catch (const nlohmann::json::exception& e) {
		throw Error(fmt::format("{}: malformed rmm.json: {}", json_path.string(), e.what()));
	}
}

} // namespace weld::lora
