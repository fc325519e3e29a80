#!/usr/bin/python3
"""Reference forward pass of a Llama-family model, written straight from the equations in
float64 NumPy, independent of weld and of libtorch: the tests compare weld's runtime with it.

usage: nn_reference.py MODEL_DIR '[[ids of sequence 1], [ids of sequence 2], ...]' [GREEDY_STEPS]
prints: {"logits": [per sequence: [seq][vocab]], "log_likelihoods": [per sequence: [seq - 1]]}
With GREEDY_STEPS, also "continuations": per sequence, the ids chosen greedily (most likely
next token) for up to GREEDY_STEPS steps, stopping before a newline (10) or EOS (257), and
"stopped": whether one of those ended it.
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


def forward(config, w, ids):
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    d = config.get("head_dim") or hidden // heads
    eps = config.get("rms_norm_eps", 1e-6)
    theta = config.get("rope_theta", 10000.0)
    seq = len(ids)
    window = config.get("sliding_window")
    if config["architectures"][0] == "Qwen2ForCausalLM" and not config.get("use_sliding_window"):
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
        gate = linear(w, p + "mlp.gate_proj", x)
        silu = gate / (1 + np.exp(-gate))
        h = h + linear(w, p + "mlp.down_proj", silu * linear(w, p + "mlp.up_proj", x))
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
    result = {"logits": [], "log_likelihoods": [], "continuations": [], "stopped": []}
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    for ids in json.loads(sys.argv[2]):
        logits = forward(config, weights, np.array(ids))
        result["logits"].append(logits.tolist())
        result["log_likelihoods"].append(log_likelihoods(logits, ids))
        if steps:
            generated, stopped = continue_greedily(config, weights, ids, steps)
            result["continuations"].append(generated)
            result["stopped"].append(stopped)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
