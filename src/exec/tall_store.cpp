#include "exec/tall_store.h"

#include "io/model.h"
#include "io/output_folder.h"
#include "tensor/convert.h"
#include "tensor/tall.h"
#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <memory>

namespace weld {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFormat = "weld-tall-store";

std::string mask_name(const std::string& tensor, size_t task) {
	return fmt::format("{}.tall_mask.{}", tensor, task);
}
uint64_t packed_size(uint64_t n) {
	return (n + 7) / 8;
}

std::vector<float> to_f32(const ModelFolder::Tensor& t) {
	std::vector<float> values(t.info->numel());
	convert_to_f32(t.info->dtype, t.file->data(*t.info).data(), values.data(), values.size());
	return values;
}

std::vector<uint8_t> from_f32(DType dtype, const std::vector<float>& values) {
	std::vector<uint8_t> bytes(values.size() * dtype_size(dtype));
	convert_from_f32(dtype, values.data(), bytes.data(), values.size());
	return bytes;
}

// The tensors that are compressed: float tensors of the base; the rest is taken from the base.
std::vector<const ModelFolder::Tensor*> compressed_tensors(const ModelFolder& base) {
	std::vector<const ModelFolder::Tensor*> out;
	for (const auto& t : base.tensors())
		if (dtype_is_arithmetic(t.info->dtype)) out.push_back(&t);
	return out;
}

} // namespace

TallCompressSummary tall_compress(const TallCompressOptions& options) {
	if (options.tasks.empty()) throw Error("tall compress: give at least one fine-tuned model");
	const auto base_dir = resolve_model_reference(options.base);
	const ModelFolder base(base_dir);
	std::vector<std::unique_ptr<ModelFolder>> tasks;
	for (const auto& ref : options.tasks)
		tasks.push_back(std::make_unique<ModelFolder>(resolve_model_reference(ref)));
	const auto tensors = compressed_tensors(base);

	TallCompressSummary summary;
	summary.tensors = tensors.size();
	std::vector<uint64_t> kept(tasks.size(), 0);
	uint64_t weights = 0;
	write_folder_atomically(options.out, options.force, [&](const fs::path& dir) {
		std::vector<OutputTensorSpec> mtl_specs, mask_specs;
		for (const auto* t : tensors) {
			mtl_specs.push_back({t->info->name, t->info->dtype, t->info->shape});
			for (size_t k = 0; k < tasks.size(); k++)
				mask_specs.push_back({mask_name(t->info->name, k), DType::U8, {packed_size(t->info->numel())}});
		}
		fs::create_directory(dir / "multitask_vector");
		fs::create_directory(dir / "masks");
		SafetensorsWriter mtl_writer(dir / "multitask_vector", mtl_specs, options.max_shard_bytes);
		SafetensorsWriter mask_writer(dir / "masks", mask_specs, options.max_shard_bytes);
		for (size_t i = 0; i < tensors.size(); i++) {
			const auto& bt = *tensors[i];
			const auto b = to_f32(bt);
			std::vector<std::vector<float>> deltas;
			for (size_t k = 0; k < tasks.size(); k++) {
				const auto* tt = tasks[k]->find(bt.info->name);
				if (!tt || tt->info->shape != bt.info->shape || !dtype_is_arithmetic(tt->info->dtype))
					throw Error(
					    fmt::format("tensor '{}' of model '{}' is missing or differs in shape or dtype from the "
					                "base '{}'",
					                bt.info->name, options.tasks[k], options.base));
				auto d = to_f32(*tt);
				for (size_t j = 0; j < d.size(); j++)
					d[j] -= b[j];
				deltas.push_back(std::move(d));
				summary.expert_bytes += tt->info->nbytes();
			}
			std::vector<float> mtl(b.size(), 0.0f);
			for (const auto& d : deltas)
				for (size_t j = 0; j < d.size(); j++)
					mtl[j] += d[j];
			std::vector<std::span<const float>> views(deltas.begin(), deltas.end());
			std::vector<std::vector<uint8_t>> masks;
			tall_masks(mtl, views, std::vector<double>(tasks.size(), options.tall_lambda), masks);
			mtl_writer.write(i, from_f32(bt.info->dtype, mtl));
			for (size_t k = 0; k < masks.size(); k++) {
				std::vector<uint8_t> bits(packed_size(b.size()), 0);
				for (size_t j = 0; j < b.size(); j++)
					if (masks[k][j]) bits[j / 8] |= static_cast<uint8_t>(1u << (j % 8)), kept[k]++;
				mask_writer.write(i * tasks.size() + k, bits);
			}
			weights += b.size();
			bt.file->release(*bt.info);
		}
		mtl_writer.finish();
		mask_writer.finish();
		summary.store_bytes = mtl_writer.layout().total_size + mask_writer.layout().total_size;

		nlohmann::ordered_json meta;
		meta["format"] = kFormat;
		meta["version"] = 1;
		meta["base"] = {{"reference", options.base}, {"path", fs::absolute(base_dir).string()}};
		meta["tall_lambda"] = options.tall_lambda;
		for (size_t k = 0; k < tasks.size(); k++) {
			summary.kept_fraction.push_back(weights ? static_cast<double>(kept[k]) / static_cast<double>(weights) : 0);
			meta["tasks"].push_back({{"name", options.tasks[k]}, {"kept_fraction", summary.kept_fraction.back()}});
		}
		write_text_file(dir / "tall.json", meta.dump(2) + "\n");
	});
	return summary;
}

void tall_extract(const TallExtractOptions& options) {
	const auto meta_path = options.store / "tall.json";
	nlohmann::json meta;
	try {
		meta = nlohmann::json::parse(read_text_file(meta_path));
	} catch (const nlohmann::json::exception& e) {
		throw Error(fmt::format("{}: invalid JSON ({})", meta_path.string(), e.what()));
	}
	if (!meta.is_object() || meta.value("format", "") != kFormat || !meta["tasks"].is_array())
		throw Error(fmt::format("{}: not a weld TALL store", meta_path.string()));
	const auto& tasks = meta["tasks"];
	std::optional<size_t> task;
	for (size_t k = 0; k < tasks.size(); k++)
		if (tasks[k].value("name", "") == options.task || std::to_string(k) == options.task) task = k;
	if (!task)
		throw Error(
		    fmt::format("{}: no task '{}' (the store has {} tasks)", meta_path.string(), options.task, tasks.size()));

	const auto base_dir =
	    options.base ? resolve_model_reference(*options.base) : fs::path(meta["base"].value("path", std::string()));
	const ModelFolder base(base_dir);
	const ModelFolder mtl(options.store / "multitask_vector");
	const ModelFolder masks(options.store / "masks");

	std::vector<OutputTensorSpec> specs;
	for (const auto& t : base.tensors())
		specs.push_back({t.info->name, t.info->dtype, t.info->shape});
	write_folder_atomically(options.out, options.force, [&](const fs::path& dir) {
		SafetensorsWriter writer(dir, specs, options.max_shard_bytes);
		for (size_t i = 0; i < base.tensors().size(); i++) {
			const auto& bt = base.tensors()[i];
			if (!dtype_is_arithmetic(bt.info->dtype)) {
				writer.write(i, bt.file->data(*bt.info));
				continue;
			}
			const auto* v = mtl.find(bt.info->name);
			const auto* m = masks.find(mask_name(bt.info->name, *task));
			const uint64_t n = bt.info->numel();
			if (!v || v->info->shape != bt.info->shape || !m || m->info->nbytes() != packed_size(n))
				throw Error(fmt::format("{}: tensor '{}' is missing or does not match the base model {}",
				                        options.store.string(), bt.info->name, base_dir.string()));
			const auto bits = m->file->data(*m->info);
			std::vector<uint8_t> mask(n);
			for (size_t j = 0; j < n; j++)
				mask[j] = (bits[j / 8] >> (j % 8)) & 1u;
			const auto b = to_f32(bt), tau = to_f32(*v);
			std::vector<float> out(n);
			tall_reconstruct(b, tau, mask, out);
			writer.write(i, from_f32(bt.info->dtype, out));
		}
		writer.finish();
		if (fs::is_regular_file(base_dir / "config.json")) fs::copy_file(base_dir / "config.json", dir / "config.json");
		copy_tokenizer_files(base_dir, dir);
	});
}

} // namespace weld
