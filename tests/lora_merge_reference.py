"""Independent NumPy reference of PEFT's add_weighted_adapter for tests/lora_merge_test.cpp.

Reads a JSON case on stdin: {"type", "weights", "density", "majority", "svd_rank", "svd_clamp",
"seed", "module", "adapters": [{"a": [[...]], "b": [[...]], "scaling": s, "index": i}], "rank"}
and prints {"a": [[...]], "b": [[...]], "delta": [[...]]} with delta = b @ a of the combined
module. Written from PEFT's definitions (model.py, merge_utils.py) with vectorized NumPy; DARE's
keep mask is weld's documented counter-based stream, reimplemented here in Python integers.
"""
import json
import sys

import numpy as np

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return h


def stream_key(seed, name, index):
    key = mix64((seed + GOLDEN) & MASK)
    key = mix64(key ^ fnv1a64(name))
    return mix64(key ^ ((index + GOLDEN) & MASK))


def dare_keep(key, count, density):
    draws = [(mix64((key + (j + 1) * GOLDEN) & MASK) >> 11) * 2.0**-53 for j in range(count)]
    return np.array(draws) < density


def prune(tensor, density, method, key):
    if density >= 1:
        return tensor
    flat = tensor.reshape(-1)
    if method == "magnitude":
        k = int(density * flat.size)
        # stable sort on -|x|: among equal magnitudes the lower index first
        order = np.argsort(-np.abs(flat), kind="stable")
        mask = np.zeros(flat.size)
        mask[order[:k]] = 1
        return (flat * mask).reshape(tensor.shape)
    keep = dare_keep(key, flat.size, density)
    return (np.where(keep, flat, 0.0) / density).reshape(tensor.shape)


def merge(kind, tensors, weights, density, majority, seed, name, indices):
    prune_method = {"ties": "magnitude", "magnitude_prune": "magnitude", "dare_linear": "random",
                    "dare_ties": "random"}.get(kind)
    if prune_method:
        tensors = [prune(t, density, prune_method, stream_key(seed, name, i)) for t, i in zip(tensors, indices)]
    stacked = np.stack(tensors)
    w = np.array(weights).reshape((-1,) + (1,) * (stacked.ndim - 1))
    if kind in ("ties", "dare_ties"):
        signs = np.sign(stacked)
        election = stacked.sum(0) if majority == "total" else signs.sum(0)
        elected = np.where(election >= 0, 1.0, -1.0)
        keep = signs == elected
        return (stacked * w * keep).sum(0) / np.maximum(keep.sum(0), 1)
    return (stacked * w).sum(0)


def rmm_errors(case):
    """Per input: ‖ΔŴ − ΔW‖_F / ‖ΔW‖_F over all modules, the factors rebuilt from the best rank-K
    approximation of [vec(F_1) … vec(F_n)] (A and B apart)."""
    k = case["rank"]
    inputs = case["inputs"]
    n = len(inputs)
    distance, norm = np.zeros(n), np.zeros(n)
    for name in inputs[0]:
        rebuilt = {}
        for factor in ("a", "b"):
            x = np.stack([np.array(inp[name][factor], dtype=np.float64).ravel() for inp in inputs], axis=1)
            u, sv, vt = np.linalg.svd(x, full_matrices=False)
            rebuilt[factor] = (u[:, :k] * sv[:k]) @ vt[:k]
        for i, inp in enumerate(inputs):
            a, b, s = np.array(inp[name]["a"]), np.array(inp[name]["b"]), inp[name]["scaling"]
            a_hat = rebuilt["a"][:, i].reshape(a.shape)
            b_hat = rebuilt["b"][:, i].reshape(b.shape)
            delta = s * b @ a
            distance[i] += np.sum((s * b_hat @ a_hat - delta) ** 2)
            norm[i] += np.sum(delta**2)
    return np.sqrt(distance / norm).tolist()


def main():
    case = json.load(sys.stdin)
    if "inputs" in case:
        json.dump({"errors": rmm_errors(case)}, sys.stdout)
        return
    kind = case["type"]
    adapters = case["adapters"]
    weights = case["weights"]
    a = [np.array(x["a"], dtype=np.float64) for x in adapters]
    b = [np.array(x["b"], dtype=np.float64) for x in adapters]
    s = [x["scaling"] for x in adapters]
    idx = [x["index"] for x in adapters]
    ws = [weights[i] * si for i, si in zip(idx, s)]
    rank = case["rank"]
    if kind == "cat":
        new_a = np.concatenate([wsi * ai for wsi, ai in zip(ws, a)], axis=0)
        new_b = np.concatenate(b, axis=1)
        # PEFT fills the first rows of a zeroed [rank, in] A (rank: all adapters' ranks summed)
        pad = rank - new_a.shape[0]
        new_a = np.pad(new_a, ((0, pad), (0, 0)))
        new_b = np.pad(new_b, ((0, 0), (0, pad)))
    elif kind.endswith("svd"):
        base = kind[: -len("_svd")] if kind != "svd" else "linear"
        deltas = [si * (bi @ ai) for si, ai, bi in zip(s, a, b)]
        delta = merge(base, deltas, ws, case.get("density"), case.get("majority"), case["seed"],
                      case["module"] + ".delta", idx)
        u, sv, vh = np.linalg.svd(delta, full_matrices=False)
        new_b = u[:, :rank] * sv[:rank]
        new_a = vh[:rank, :]
        clamp = case.get("svd_clamp")
        if clamp is not None:
            high = np.quantile(np.concatenate([new_b.ravel(), new_a.ravel()]), clamp)
            new_b = np.clip(new_b, -high, high) if high >= 0 else np.full_like(new_b, high)
            new_a = np.clip(new_a, -high, high) if high >= 0 else np.full_like(new_a, high)
    else:
        wa = [np.sign(x) * np.sqrt(abs(x)) if x != 0 else 0.0 for x in ws]
        wb = [np.sqrt(abs(x)) for x in ws]
        new_a = merge(kind, a, wa, case.get("density"), case.get("majority"), case["seed"], case["module"] + ".lora_A", idx)
        new_b = merge(kind, b, wb, case.get("density"), case.get("majority"), case["seed"], case["module"] + ".lora_B", idx)
    json.dump({"a": new_a.tolist(), "b": new_b.tolist(), "delta": (new_b @ new_a).tolist()}, sys.stdout)


main()
