#!/usr/bin/python3
"""How far the experts moved from the base, and how their task vectors τ = θ_expert − θ_base
relate (all weights flattened together):

  tau_ratio      ‖τ‖ / ‖θ_base‖ per expert
  cosine         cos(τ_a, τ_b) per pair
  sign_conflict  per pair: of the weights both experts changed, the fraction changed in opposite
                 directions; also among the weights in both experts' top 20% by |τ| (what TIES
                 keeps), and over all experts at once: the fraction of weights whose nonzero
                 changes do not all have one sign (the TIES paper's measure)

    bench/quality/task_vectors.py [MODELS_DIR]      (default bench/quality/models)

Reads F32 or BF16 model.safetensors files with NumPy (Debian: python3-numpy); prints Markdown.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

# The family's tasks, in the fixed order in which the scaling table adds experts (report.py).
TASKS = ["cipher_copy", "cipher_reverse", "cipher_swap", "cipher_rotl", "cipher_rotr", "cipher_sort", "cipher_evens",
         "cipher_halves"]
TOP_FRACTION = 0.2


def load_tensors(folder):
    """{name: float64 array of its shape} of folder/model.safetensors (F32 or BF16)."""
    path = Path(folder) / "model.safetensors"
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in sorted(header.items()):
        if name == "__metadata__":
            continue
        begin, end = (8 + n + o for o in info["data_offsets"])
        if info["dtype"] == "F32":
            values = np.frombuffer(data[begin:end], dtype="<f4")
        elif info["dtype"] == "BF16":
            values = (np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            sys.exit(f"{path}: tensor {name} is {info['dtype']}; this script reads F32 and BF16 models")
        out[name] = values.astype(np.float64).reshape(info["shape"])
    return out


def load(folder):
    """Every weight of folder/model.safetensors, flattened in tensor-name order, as float64."""
    tensors = load_tensors(folder)
    return np.concatenate([tensors[k].ravel() for k in sorted(tensors)])


def opposite_fraction(a, b, mask):
    both = mask & (a != 0) & (b != 0)
    return float(np.mean(np.sign(a[both]) != np.sign(b[both]))) if both.any() else 0.0


def measure(models, tasks=TASKS):
    """The family's measurements (see the module's docstring) as plain dicts of floats."""
    base = load(models / "base")
    tau = {t: load(models / t) - base for t in tasks}
    norm = {t: np.linalg.norm(v) for t, v in tau.items()}
    top = {t: np.abs(v) >= np.quantile(np.abs(v), 1 - TOP_FRACTION) for t, v in tau.items()}
    everywhere = np.ones(base.size, dtype=bool)
    out = {"tau_ratio": {t: float(norm[t] / np.linalg.norm(base)) for t in tasks},
           "cosine": {}, "sign_conflict": {}, "sign_conflict_top": {}}
    for a in tasks:
        out["cosine"][a] = {b: float(tau[a] @ tau[b] / (norm[a] * norm[b])) for b in tasks}
        out["sign_conflict"][a] = {b: opposite_fraction(tau[a], tau[b], everywhere) for b in tasks}
        out["sign_conflict_top"][a] = {b: opposite_fraction(tau[a], tau[b], top[a] & top[b]) for b in tasks}
    signs = np.stack([np.sign(tau[t]) for t in tasks])
    changed = (signs != 0).sum(axis=0) >= 2
    mixed = (signs > 0).any(axis=0) & (signs < 0).any(axis=0)
    out["sign_conflict_all"] = float(mixed[changed].mean()) if changed.any() else 0.0
    return out


def off_diagonal(table, tasks):
    return [table[a][b] for i, a in enumerate(tasks) for b in tasks[i + 1:]]


def markdown(m, tasks=TASKS):
    lines = ["| expert | ‖τ‖ / ‖θ_base‖ | " + " | ".join(f"cos {t}" for t in tasks) + " |",
             "|---|---:|" + "---:|" * len(tasks)]
    for a in tasks:
        lines.append(f"| {a} | {m['tau_ratio'][a]:.3f} | " +
                     " | ".join(f"{m['cosine'][a][b]:.3f}" for b in tasks) + " |")
    lines += ["", "| expert | " + " | ".join(f"sign conflict {t}" for t in tasks) + " |",
              "|---|" + "---:|" * len(tasks)]
    for a in tasks:
        lines.append(f"| {a} | " + " | ".join(
            f"{m['sign_conflict'][a][b]:.3f} ({m['sign_conflict_top'][a][b]:.3f})" for b in tasks) + " |")
    cos = off_diagonal(m["cosine"], tasks)
    conflict = off_diagonal(m["sign_conflict"], tasks)
    conflict_top = off_diagonal(m["sign_conflict_top"], tasks)
    lines += ["", f"‖τ‖ / ‖θ_base‖ {min(m['tau_ratio'].values()):.3f} to {max(m['tau_ratio'].values()):.3f}; "
              f"pairwise cosine {min(cos):.3f} to {max(cos):.3f} (mean {np.mean(cos):.3f}); "
              f"pairwise sign conflict {np.mean(conflict):.3f} of the weights both changed "
              f"({np.mean(conflict_top):.3f} within both top {TOP_FRACTION:.0%}, in parentheses above); "
              f"all {len(tasks)} experts: {m['sign_conflict_all']:.3f} of the weights two or more changed "
              "have changes of both signs."]
    return "\n".join(lines)


def main():
    models = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "models")
    print(markdown(measure(models)))


if __name__ == "__main__":
    main()
