"""Recomputes weld analyze's summary.json with NumPy, straight from the safetensors files.

usage: analyze_reference.py SUMMARY.json BASE_DIR MODEL_DIR... [--recipe-ties DENSITY WEIGHT...]
Prints "ok" and exits 0 when every number matches; else prints the mismatches and exits 1.
Only for single-file F32 models (the tests' tiny family)."""

import json
import math
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"])
    return out


def place(name):
    parts = name.split(".")
    layer = -1
    for k in range(len(parts) - 1):
        if parts[k] in ("layers", "h", "blocks") and parts[k + 1].isdigit():
            layer = int(parts[k + 1])
            break
    module = parts[-2] if len(parts) > 1 and parts[-1] in ("weight", "bias") else parts[-1]
    return layer, module


def tensor_sums(base, models):
    """The sums weld keeps per tensor, computed independently."""
    deltas = np.stack([(m - base).ravel() for m in models])  # float32 subtraction, as weld
    d64 = deltas.astype(np.float64)
    n_models, n = deltas.shape
    s = {"elements": n, "base_sq": float((base.astype(np.float64) ** 2).sum())}
    s["dot"] = d64 @ d64.T
    s["conflicts"] = int(((deltas > 0).any(0) & (deltas < 0).any(0)).sum())
    elected = np.sign(d64.sum(0))
    magnitude = np.abs(d64)
    s["abs_sum"] = float(magnitude.sum())
    dropped = (deltas != 0) & (np.sign(d64) != elected)
    s["dropped"] = float(magnitude[dropped].sum())
    k = max(1, int(math.floor(n * 0.1)))
    masks = []
    for i in range(n_models):
        order = np.lexsort((np.arange(n), -np.abs(deltas[i])))  # by |τ| descending, then index
        mask = np.zeros(n, bool)
        mask[order[:k]] = True
        masks.append(mask)
    s["top_k"] = k
    s["shared"] = np.array([[int((a & b).sum()) for b in masks] for a in masks])
    s["matrices"] = 0
    s["erank"] = np.zeros(n_models)
    s["energy"] = np.zeros(n_models)
    if base.ndim == 2:
        s["matrices"] = 1
        kept = max(1, min(base.shape) // n_models)
        for i in range(n_models):
            sigma = np.linalg.svd(d64[i].reshape(base.shape), compute_uv=False)
            p = sigma / sigma.sum()
            p = p[p > 0]
            s["erank"][i] = math.exp(-(p * np.log(p)).sum())
            s["energy"][i] = (sigma[:kept] ** 2).sum() / (sigma**2).sum()
        s["kept_rank"] = kept
    return s


def add(total, s):
    if total is None:
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items() if k != "kept_rank"}
    for k, v in s.items():
        if k != "kept_rank":
            total[k] = total[k] + v
    return total


def derived(s, n_models):
    d = np.diag(s["dot"])
    out = {
        "elements": s["elements"],
        "relative_norm": list(np.sqrt(d / s["base_sq"])),
        "cosine": [[s["dot"][i][j] / math.sqrt(d[i] * d[j]) for j in range(n_models)] for i in range(n_models)],
        "sign_conflict_rate": s["conflicts"] / s["elements"],
        "election_drop_rate": s["dropped"] / s["abs_sum"],
        "top_k_jaccard": [
            [s["shared"][i][j] / (2 * s["top_k"] - s["shared"][i][j]) for j in range(n_models)]
            for i in range(n_models)
        ],
        "matrices": s["matrices"],
    }
    if s["matrices"]:
        out["effective_rank"] = list(s["erank"] / s["matrices"])
        out["top_rank_energy"] = list(s["energy"] / s["matrices"])
    return out


errors = []


def compare(where, expected, actual, absolute=1e-9):
    if isinstance(expected, dict):
        for key, value in expected.items():
            if key not in actual:
                errors.append(f"{where}: no '{key}'")
            else:
                compare(f"{where}.{key}", value, actual[key], absolute)
    elif isinstance(expected, (list, tuple)):
        if len(expected) != len(actual):
            errors.append(f"{where}: {len(actual)} values, expected {len(expected)}")
        for i, (e, a) in enumerate(zip(expected, actual)):
            compare(f"{where}[{i}]", e, a, absolute)
    elif isinstance(expected, str):
        if expected != actual:
            errors.append(f"{where}: weld {actual!r}, expected {expected!r}")
    else:
        e, a = float(expected), float(actual)
        if not abs(e - a) <= absolute + 1e-6 * abs(e):
            errors.append(f"{where}: weld {a!r}, NumPy {e!r}")


def ties_kept(base, models, density, weights):
    """Per model: (entries kept, nonzero entries, |τ| kept, |τ|) of TIES' trim and sign election."""
    deltas = [(m - base).ravel().astype(np.float64) for m in models]
    n = deltas[0].size
    k = int(math.floor(density * n))
    trimmed = []
    for d in deltas:
        order = np.lexsort((np.arange(n), -np.abs(d)))
        t = np.zeros(n)
        t[order[:k]] = d[order[:k]]
        trimmed.append(t)
    elected = np.sign(sum(w * t for w, t in zip(weights, trimmed)))
    out = []
    for d, t in zip(deltas, trimmed):
        kept = (t != 0) & (np.sign(t) == elected)
        out.append((int(kept.sum()), int((d != 0).sum()), float(np.abs(d)[kept].sum()), float(np.abs(d).sum())))
    return out


def main():
    args = sys.argv[1:]
    ties = None
    if "--recipe-ties" in args:
        at = args.index("--recipe-ties")
        ties = (float(args[at + 1]), [float(w) for w in args[at + 2 :]])
        args = args[:at]
    summary = json.load(open(args[0]))
    base = read_safetensors(args[1] + "/model.safetensors")
    models = [read_safetensors(m + "/model.safetensors") for m in args[2:]]
    n_models = len(models)
    layers, modules, overall = {}, {}, None
    for name in base:
        s = tensor_sums(base[name], [m[name] for m in models])
        layer, module = place(name)
        entry = next((t for t in summary["tensors"] if t["name"] == name), None)
        if entry is None:
            errors.append(f"tensor {name} missing from summary.json")
            continue
        expected = derived(s, n_models)
        if s["matrices"]:
            expected["kept_rank"] = s["kept_rank"]
        compare(f"tensors[{name}]", expected, entry)
        if layer >= 0:
            layers[layer] = add(layers.get(layer), s)
        modules[module] = add(modules.get(module), s)
        overall = add(overall, s)
    compare("overall", derived(overall, n_models), summary["overall"])
    compare("layers", [dict(derived(layers[k], n_models), layer=k) for k in sorted(layers)], summary["layers"])
    compare("modules", [dict(derived(modules[k], n_models), module=k) for k in sorted(modules)], summary["modules"])
    if ties:
        density, weights = ties
        recipe = {t["name"]: t for t in summary["recipe"]["tensors"]}
        checked = 0
        for name in base:
            if name not in recipe:
                continue
            for i, (kept, nonzero, kept_mass, mass) in enumerate(
                ties_kept(base[name], [m[name] for m in models], density, weights)
            ):
                compare(f"recipe[{name}].kept_fraction[{i}]", kept / nonzero, recipe[name]["kept_fraction"][i])
                compare(f"recipe[{name}].kept_mass_fraction[{i}]", kept_mass / mass,
                        recipe[name]["kept_mass_fraction"][i])
            checked += 1
        if checked == 0:
            errors.append("no recipe tensors")
    if errors:
        print("\n".join(errors[:40]))
        sys.exit(1)
    print("ok")


main()
