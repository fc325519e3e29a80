#!/usr/bin/python3
"""Reference forward pass of a Llama-family model, written straight from the equations in
float64 NumPy, independent of weld and of libtorch: the tests compare weld's runtime with it.

usage: nn_reference.py MODEL_DIR '[[ids of sequence 1], [ids of sequence 2], ...]' [GREEDY_STEPS] [hidden]
prints: {"logits": [per sequence: [seq][vocab]], "log_likelihoods": [per sequence: [seq - 1]]}
With GREEDY_STEPS, also "continuations": per sequence, the ids chosen greedily (most likely
next token) for up to GREEDY_STEPS steps, stopping before a newline (10) or EOS (257), and
"stopped": whether one of those ended it. With "hidden", also "hidden_states": per sequence,
the residual stream entering each layer ([layers][seq][hidden]; the embeddings for layer 0).

Mixtral and Qwen2-MoE layers route token by token: the router's softmax, the top
num_experts_per_tok experts by probability, their probabilities renormalized (Mixtral always,
Qwen2-MoE with norm_topk_prob) as weights, plus Qwen2-MoE's shared expert times the sigmoid of
its gate. "routes" then lists, per sequence, layer and token, the experts chosen.
"""
import json
import os
import struct
import sys

import numpy as np


def bf16_to_f64(raw):
    bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return bits.view(np.float32).astype(np.float64)


def read_safetensors(path):
    """8-byte little-endian header length, JSON header, raw little-endian data."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin : base + end]
        kind = info["dtype"]
        if kind == "BF16":
            values = bf16_to_f64(raw)
        else:
            values = np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2", "F64": "<f8"}[kind]).astype(np.float64)
        out[name] = values.reshape(info["shape"])
    return out


def read_model(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for name in files:
        weights.update(read_safetensors(os.path.join(folder, name)))
    return json.load(open(os.path.join(folder, "config.json"))), weights


def linear(w, prefix, x):
    y = x @ w[prefix + ".weight"].T
    return y + w[prefix + ".bias"] if prefix + ".bias" in w else y


def rms_norm(x, weight, eps):
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def swiglu(w, prefix, x, names=("gate_proj", "up_proj", "down_proj")):
    gate = linear(w, prefix + names[0], x)
    silu = gate / (1 + np.exp(-gate))
    return linear(w, prefix + names[2], silu * linear(w, prefix + names[1], x))


def sparse_layer(config, layer):
    arch = config["architectures"][0]
    if arch == "MixtralForCausalLM":
        return True
    if arch != "Qwen2MoeForCausalLM" or layer in config.get("mlp_only_layers", []):
        return False
    return (layer + 1) % config.get("decoder_sparse_step", 1) == 0


def routed_mlp(config, w, p, x, routes):
    mixtral = config["architectures"][0] == "MixtralForCausalLM"
    prefix = p + ("block_sparse_moe." if mixtral else "mlp.")
    names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    top = config.get("num_experts_per_tok", 2 if mixtral else 4)
    renormalize = mixtral or config.get("norm_topk_prob", False)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        probs = softmax(w[prefix + "gate.weight"] @ x[t])
        chosen = sorted(range(len(probs)), key=lambda e: -probs[e])[:top]
        weights = probs[chosen] / (probs[chosen].sum() if renormalize else 1.0)
        routes.append(chosen)
        for e, weight in zip(chosen, weights):
            out[t] += weight * swiglu(w, f"{prefix}experts.{e}.", x[t : t + 1], names)[0]
        if not mixtral:
            gate = 1 / (1 + np.exp(-(w[prefix + "shared_expert_gate.weight"] @ x[t])[0]))
            out[t] += gate * swiglu(w, prefix + "shared_expert.", x[t : t + 1], names)[0]
    return out


def forward(config, w, ids, hidden_states=None, routes=None):
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    d = config.get("head_dim") or hidden // heads
    eps = config.get("rms_norm_eps", 1e-6)
    theta = config.get("rope_theta", 10000.0)
    seq = len(ids)
    window = config.get("sliding_window")
    if config["architectures"][0] in ("Qwen2ForCausalLM", "Qwen2MoeForCausalLM") and not config.get("use_sliding_window"):
        window = None
    hidden_from = np.triu(np.ones((seq, seq), dtype=bool), 1)  # causal: no key after the query
    if window:
        hidden_from |= np.tril(np.ones((seq, seq), dtype=bool), -window)  # nor window or more before it

    # Rotary embedding: angle of position p in pair i is p * theta^(-2i/d); rotate_half pairs
    # element i with element i + d/2.
    inv_freq = theta ** (-np.arange(0, d, 2) / d)
    angles = np.outer(np.arange(seq), inv_freq)
    cos = np.cos(np.concatenate([angles, angles], axis=-1))
    sin = np.sin(np.concatenate([angles, angles], axis=-1))

    def rope(x):  # x: [heads, seq, d]
        rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
        return x * cos + rotated * sin

    h = w["model.embed_tokens.weight"][ids]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        if hidden_states is not None:
            hidden_states.append(h.tolist())
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = rope(linear(w, p + "self_attn.q_proj", x).reshape(seq, heads, d).transpose(1, 0, 2))
        k = rope(linear(w, p + "self_attn.k_proj", x).reshape(seq, kv_heads, d).transpose(1, 0, 2))
        v = linear(w, p + "self_attn.v_proj", x).reshape(seq, kv_heads, d).transpose(1, 0, 2)
        out = np.zeros((heads, seq, d))
        for head in range(heads):
            kv = head // (heads // kv_heads)  # grouped-query attention
            scores = q[head] @ k[kv].T / np.sqrt(d)
            scores[hidden_from] = -np.inf
            out[head] = softmax(scores) @ v[kv]
        h = h + linear(w, p + "self_attn.o_proj", out.transpose(1, 0, 2).reshape(seq, heads * d))
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        if sparse_layer(config, layer):
            h = h + routed_mlp(config, w, p, x, routes if routes is not None else [])
        else:
            h = h + swiglu(w, p + "mlp.", x)
    h = rms_norm(h, w["model.norm.weight"], eps)
    tied = config.get("tie_word_embeddings", False)
    return h @ (w["model.embed_tokens.weight"] if tied else w["lm_head.weight"]).T


def log_likelihoods(logits, ids):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return [float(log_probs[t, ids[t + 1]]) for t in range(len(ids) - 1)]


def continue_greedily(config, weights, ids, steps):
    ids = list(ids)
    generated = []
    for _ in range(steps):
        next_id = int(np.argmax(forward(config, weights, np.array(ids))[-1]))
        if next_id in (10, 257):
            return generated, True
        ids.append(next_id)
        generated.append(next_id)
    return generated, False


def main():
    config, weights = read_model(sys.argv[1])
    result = {"logits": [], "log_likelihoods": [], "continuations": [], "stopped": [], "hidden_states": [], "routes": []}
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    want_hidden = len(sys.argv) > 4 and sys.argv[4] == "hidden"
    for ids in json.loads(sys.argv[2]):
        hidden_states, routes = [], []
        logits = forward(config, weights, np.array(ids), hidden_states, routes)
        result["routes"].append(routes)
        if want_hidden:
            result["hidden_states"].append(hidden_states)
        result["logits"].append(logits.tolist())
        result["log_likelihoods"].append(log_likelihoods(logits, ids))
        if steps:
            generated, stopped = continue_greedily(config, weights, ids, steps)
            result["continuations"].append(generated)
            result["stopped"].append(stopped)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
