#!/usr/bin/python3
"""How far the experts moved from the base: the size of each task vector relative to the base's
weights, and the cosine similarity between task vectors (all weights flattened together).

    bench/quality/task_vectors.py [MODELS_DIR]      (default bench/quality/models)

Reads float32 model.safetensors files with NumPy (Debian: python3-numpy); prints a Markdown table.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

TASKS = ["addition", "reverse", "sort", "count", "caesar", "brackets"]


def load(folder):
    data = (folder / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in sorted(header.items()):
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit(f"{folder}: {name} is {info['dtype']}; this script reads F32 models")
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + begin:8 + n + end], dtype=np.float32).astype(np.float64)
    return np.concatenate([out[k] for k in sorted(out)])


def main():
    models = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "models")
    base = load(models / "base")
    tau = {t: load(models / t) - base for t in TASKS if (models / t).exists()}
    names = list(tau)
    print("| expert | ‖τ‖ / ‖θ_base‖ | " + " | ".join(f"cos with {t}" for t in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for a in names:
        cos = [tau[a] @ tau[b] / (np.linalg.norm(tau[a]) * np.linalg.norm(tau[b])) for b in names]
        print(f"| {a} | {np.linalg.norm(tau[a]) / np.linalg.norm(base):.3f} | " +
              " | ".join(f"{c:.3f}" for c in cos) + " |")


if __name__ == "__main__":
    main()
