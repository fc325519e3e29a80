// RCP-Merging (Yang et al. 2025, "considering reasoning capability as prior"): one model's skills
// (the paper's long chain-of-thought reasoning model θ_r) are protected while the task vectors of
// domain models θ_d are grafted onto it, weight by weight, where the domain needs them more than
// the protected model minds:
//   p_d = F_r ⊙ θ_r² ⊙ (θ_r − θ_d)²   reasoning importance of the change (F_r: θ_r's Fisher, so
//                                      F_r θ_r² = E[(g ⊙ θ_r)²], the authors' "(g·w)²")
//   C_d = ḡ_d ⊙ θ_d + λ p_d           ḡ_d: the domain loss's gradient at θ_d; ḡ·θ < 0 means
//                                      zeroing the weight would raise the domain loss
//   θ = θ_r + Σ_d [C_d ≤ 0] ⊙ (θ_d − θ_base)
// The roles come from the statistics: the one model with `weld stats --kind fisher` is protected,
// every model with `--kind gradient` is a domain model. The authors vote over per-sample
// gradients (merge where most samples give C ≤ 0); weld takes the mean gradient of the domain
// data, one statistic of the model's size.
#include "methods/methods.h"
#include "util/error.h"

#include <fmt/format.h>

namespace weld {
namespace {

class RcpMethod final : public MergeMethod {
public:
	const MethodInfo& info() const override { return info_; }

	void merge(const MergeInput& input, std::span<float> out) const override {
		check_merge_input(info_, input, out);
		const double lambda = global_param(info_, input, "lambda");
		const auto base = input.sources[static_cast<size_t>(input.base_index)];
		std::vector<size_t> domains;
		size_t prior = SIZE_MAX;
		for (size_t i : model_indices(input)) {
			const auto kind = i < input.statistics_kinds.size() ? input.statistics_kinds[i] : std::string_view();
			if (i >= input.statistics.size() || input.statistics[i].size() != out.size())
				throw Error(fmt::format("tensor '{}': model {} has no statistics for it", input.tensor_name, i));
			if (kind == "gradient") {
				domains.push_back(i);
			} else if (prior != SIZE_MAX) {
				throw Error(fmt::format("tensor '{}': models {} and {} both bring a Fisher; rcp protects one model "
				                        "(Fisher statistics) and grafts the others (gradient statistics)",
				                        input.tensor_name, prior, i));
			} else {
				prior = i;
			}
		}
		if (prior == SIZE_MAX)
			throw Error(fmt::format("tensor '{}': no model brings Fisher statistics; rcp needs the protected model's "
			                        "(weld stats --kind fisher) besides the domain models' (--kind gradient)",
			                        input.tensor_name));
		const auto theta_r = input.sources[prior];
		const auto fisher = input.statistics[prior];
		for (size_t j = 0; j < out.size(); ++j) {
			double value = theta_r[j];
			for (size_t d : domains) {
				const double theta_d = input.sources[d][j], change = static_cast<double>(theta_r[j]) - theta_d;
				const double importance = fisher[j] * static_cast<double>(theta_r[j]) * theta_r[j] * change * change;
				const double constraint = input.statistics[d][j] * theta_d + lambda * importance;
				if (constraint <= 0) value += theta_d - base[j];
			}
			out[j] = static_cast<float>(value);
		}
	}

private:
	MethodInfo info_{
	    .name = "rcp",
	    .description = "Protects one model's skills (its Fisher) and grafts the other models' task vectors where "
	                   "their domain loss needs them more (RCP-Merging)",
	    .reference = "https://github.com/ZeroNLP/RCP-Merging",
	    .global_params = {{.name = "lambda",
	                       .default_value = 1000,
	                       .help = "Weight of the protected model's importance against the domain's sensitivity "
	                               "(the authors' 1000; larger protects more)",
	                       .min_value = 0}},
	    .model_params = {{.name = "stats",
	                      .type = ParamType::Text,
	                      .has_default = false,
	                      .help = "Statistics folder: weld stats --kind fisher for the protected model, --kind "
	                              "gradient for each domain model"}},
	    .base = BaseModel::Required,
	    .statistics = "fisher|gradient",
	};
};

} // namespace

const MergeMethod& rcp_method() {
	static const RcpMethod method;
	return method;
}

} // namespace weld
