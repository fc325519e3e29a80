// MergeLock (weld protect): a Llama-family model rewritten so that it computes the same function
// while its attention weights no longer line up with its base or siblings, so parameter-space
// merges with it fail. Per layer and key/value group, with q = W_q x, k = W_k x, v = W_v x:
//   q ← M q, k ← M⁻ᵀ k   (qᵀk unchanged),     v ← A v, W_o ← W_o A⁻¹   (W_o·v unchanged).
// RoPE rotates each frequency pair (rows j and j + head_dim/2 of a head, Hugging Face's
// layout) by a position-dependent angle, so M is block-diagonal in those pairs, each block a
// scaled rotation s·R(φ): those commute with every 2×2 rotation, and M⁻ᵀ = s⁻¹·R(φ). Under GQA
// the query heads of a group share its key and value head, so they share M and A. Biases (Qwen2)
// are transformed as their rows are.
#pragma once

#include <cstdint>
#include <string>

namespace weld {

struct ProtectOptions {
	std::string model, out;
	uint64_t seed = 0;
	bool force = false;
	uint64_t max_shard_bytes = 5'000'000'000;
};

// Writes the protected model (all or nothing). Throws weld::Error naming the model, config key
// or tensor when the model is not a Llama-family model weld can protect.
void protect_model(const ProtectOptions& options);

} // namespace weld
