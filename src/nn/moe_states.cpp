#include "nn/moe_states.h"

#include "nn/llama.h"

#include <memory>
#include <optional>

namespace weld::nn {

moe::PromptStates runtime_prompt_states() {
	auto model = std::make_shared<std::optional<LlamaModel>>();
	return [model](const std::filesystem::path& base, const std::vector<int64_t>& ids, bool average) {
		if (!*model) model->emplace(LlamaModel::load(base, at::kFloat));
		const auto& m = **model;
		const auto input = at::tensor(at::ArrayRef<int64_t>(ids), at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
		at::NoGradGuard no_grad;
		std::vector<at::Tensor> outputs;
		m.forward(input, &outputs);
		std::vector<at::Tensor> layer_inputs = {at::embedding(m.parameter("model.embed_tokens.weight"), input)};
		layer_inputs.insert(layer_inputs.end(), outputs.begin(), outputs.end() - 1);
		std::vector<float> states;
		for (const auto& h : layer_inputs) { // [1, seq, hidden]
			const auto v = (average ? h[0].mean(0) : h[0][-1]).to(at::kFloat).contiguous();
			states.insert(states.end(), v.data_ptr<float>(), v.data_ptr<float>() + v.numel());
		}
		return states;
	};
}

} // namespace weld::nn
