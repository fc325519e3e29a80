#include "lora/apply.h"

#include "io/output_folder.h"
#include "linalg/linalg.h"
#include "tensor/convert.h"
#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <unordered_map>

namespace weld {
namespace fs = std::filesystem;

namespace {

std::string shape_text(const std::vector<uint64_t>& shape) {
	return fmt::format("[{}]", fmt::join(shape, ", "));
}

bool transposed(const LoraModule& module, bool fan_in_fan_out) {
	return module.embedding || fan_in_fan_out;
}

std::vector<float> to_f32(const SafetensorsFile& file, const TensorInfo& info) {
	std::vector<float> values(info.numel());
	convert_to_f32(info.dtype, file.data(info).data(), values.data(), values.size());
	return values;
}

// The bytes of a tensor in dtype `to`: copied when it already is, else converted through float32.
std::vector<uint8_t> in_dtype(const SafetensorsFile& file, const TensorInfo& info, DType to) {
	const auto bytes = file.data(info);
	if (info.dtype == to) return {bytes.begin(), bytes.end()};
	const auto values = to_f32(file, info);
	std::vector<uint8_t> out(values.size() * dtype_size(to));
	convert_from_f32(to, values.data(), out.data(), values.size());
	return out;
}

std::vector<uint8_t> from_f32(DType dtype, const std::vector<float>& values) {
	std::vector<uint8_t> out(values.size() * dtype_size(dtype));
	convert_from_f32(dtype, values.data(), out.data(), values.size());
	return out;
}

// Module names of the base: its tensors' names without ".weight".
std::vector<std::string> base_modules(const ModelFolder& base) {
	std::vector<std::string> modules;
	for (const auto& t : base.tensors())
		if (std::string_view(t.info->name).ends_with(".weight"))
			modules.push_back(t.info->name.substr(0, t.info->name.size() - 7));
	return modules;
}

void check_targets(const PeftAdapter& adapter, const ModelFolder& base, const std::string& base_label) {
	const auto& config = adapter.config;
	if (config.target_modules.empty() && !config.target_modules_regex) return;
	for (const auto& module : base_modules(base))
		if (config.targets(module)) return;
	const std::string targets = config.target_modules_regex
	                                ? quote_for_message(*config.target_modules_regex)
	                                : fmt::format("[{}]", fmt::join(config.target_modules, ", "));
	throw Error(fmt::format("{}: target_modules {} match no module of the base model {}", show(adapter.dir),
	                        escape_for_message(targets, 200), show(base_label)));
}

} // namespace

std::vector<float> lora_delta(const LoraModule& module, bool transpose) {
	linalg::MatrixF a(module.rank, module.in_features), b(module.out_features, module.rank);
	a.data = module.a;
	b.data = module.b;
	// (B·A)ᵀ = Aᵀ·Bᵀ: one product in the weight's own layout.
	auto product = transpose ? linalg::matmul(a, true, b, true) : linalg::matmul(b, false, a, false);
	const auto scaling = static_cast<float>(module.scaling);
	for (float& v : product.data)
		v *= scaling;
	return std::move(product.data);
}

std::vector<uint64_t> lora_weight_shape(const LoraModule& module, bool fan_in_fan_out) {
	if (transposed(module, fan_in_fan_out)) return {module.in_features, module.out_features};
	return {module.out_features, module.in_features};
}

void check_adapter_fits(const PeftAdapter& adapter, const ModelFolder& base, const std::string& base_label) {
	const std::string where = show(adapter.dir);
	for (const auto& m : adapter.modules) {
		const auto* weight = base.find(m.name + ".weight");
		if (!weight)
			throw Error(fmt::format("{}: target module {} does not exist in the base model {} (no tensor {})", where,
			                        quote_for_message(m.name), show(base_label),
			                        quote_for_message(m.name + ".weight")));
		if (!dtype_is_arithmetic(weight->info->dtype))
			throw Error(fmt::format("{}: module {}: the base model's {} is {}, not a float tensor", where,
			                        quote_for_message(m.name), quote_for_message(weight->info->name),
			                        dtype_safetensors_name(weight->info->dtype)));
		const auto expected = lora_weight_shape(m, adapter.config.fan_in_fan_out);
		if (weight->info->shape != expected)
			throw Error(fmt::format("{}: module {}: shape mismatch: A {} and B {} make an update of {}, but the base "
			                        "model's {} is {} {}",
			                        where, quote_for_message(m.name), shape_text({m.rank, m.in_features}),
			                        shape_text({m.out_features, m.rank}), shape_text(expected),
			                        quote_for_message(weight->info->name), dtype_safetensors_name(weight->info->dtype),
			                        shape_text(weight->info->shape)));
		if (m.bias.empty()) continue;
		const auto* bias = base.find(m.name + ".bias");
		if (!bias || bias->info->shape != std::vector<uint64_t>{m.out_features})
			throw Error(fmt::format("{}: module {} has a lora_B.bias but the base model has no {} of {} values", where,
			                        quote_for_message(m.name), quote_for_message(m.name + ".bias"), m.out_features));
	}
	for (const auto& s : adapter.saved) {
		const auto* t = base.find(s.name);
		if (!t)
			throw Error(fmt::format("{}: modules_to_save tensor {} does not exist in the base model {}", where,
			                        quote_for_message(s.name), show(base_label)));
		if (t->info->shape != s.info->shape || !dtype_is_arithmetic(s.info->dtype))
			throw Error(fmt::format("{}: modules_to_save tensor {}: shape mismatch: the adapter's is {} {}, the base "
			                        "model's {}",
			                        where, quote_for_message(s.name), dtype_safetensors_name(s.info->dtype),
			                        shape_text(s.info->shape), shape_text(t->info->shape)));
	}
	check_targets(adapter, base, base_label);
}

void write_lora_applied_model(const ModelFolder& base, const PeftAdapter& adapter, const fs::path& dir,
                              std::optional<DType> dtype, uint64_t max_shard_bytes) {
	std::unordered_map<std::string, const LoraModule*> by_weight, by_bias;
	for (const auto& m : adapter.modules) {
		by_weight[m.name + ".weight"] = &m;
		if (!m.bias.empty()) by_bias[m.name + ".bias"] = &m;
	}
	std::vector<OutputTensorSpec> specs;
	for (const auto& t : base.tensors()) {
		const bool convert = dtype && dtype_is_arithmetic(t.info->dtype);
		specs.push_back({t.info->name, convert ? *dtype : t.info->dtype, t.info->shape});
	}
	SafetensorsWriter writer(dir, specs, max_shard_bytes);
	for (size_t i = 0; i < base.tensors().size(); i++) {
		const auto& t = base.tensors()[i];
		const std::string& name = t.info->name;
		const DType out = specs[i].dtype;
		if (const auto* saved = adapter.find_saved(name)) {
			writer.write(i, in_dtype(*adapter.file, *saved->info, out));
		} else if (auto w = by_weight.find(name); w != by_weight.end()) {
			auto values = to_f32(*t.file, *t.info);
			const auto delta = lora_delta(*w->second, transposed(*w->second, adapter.config.fan_in_fan_out));
			for (size_t j = 0; j < values.size(); j++)
				values[j] += delta[j];
			writer.write(i, from_f32(out, values));
		} else if (auto b = by_bias.find(name); b != by_bias.end()) {
			auto values = to_f32(*t.file, *t.info);
			const auto scaling = static_cast<float>(b->second->scaling);
			for (size_t j = 0; j < values.size(); j++)
				values[j] += b->second->bias[j] * scaling;
			writer.write(i, from_f32(out, values));
		} else {
			writer.write(i, in_dtype(*t.file, *t.info, out));
		}
		t.file->release(*t.info);
	}
	writer.finish();
	if (const auto& config = base.config()) {
		auto json = nlohmann::ordered_json::parse(config->text);
		if (dtype) json["torch_dtype"] = std::string(dtype_torch_name(*dtype));
		write_text_file(dir / "config.json", json.dump(2) + "\n");
	}
	copy_tokenizer_files(base.dir(), dir);
}

void apply_lora(const ApplyLoraOptions& options) {
	const ModelFolder base(resolve_model_reference(options.base));
	const PeftAdapter adapter = read_peft_adapter(resolve_model_reference(options.adapter));
	check_adapter_fits(adapter, base, options.base);
	write_folder_atomically(options.out, options.force, [&](const fs::path& dir) {
		write_lora_applied_model(base, adapter, dir, options.dtype, options.max_shard_bytes);
	});
}

} // namespace weld
