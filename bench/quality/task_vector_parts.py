#!/usr/bin/python3
"""Where an expert's task vector does its work and its damage: for each part of the model
(attention, MLP, embeddings + lm_head, norms, each layer), the base plus the expert's task vector
restricted to that part, scored on every task with `weld eval`.

    bench/quality/task_vector_parts.py BASE EXPERT [--weld build/weld] [--held-out 200]

F32 or BF16 models (written back as F32). Standard library and NumPy (Debian: python3-numpy).
"""
import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from task_vectors import TASKS as TASK_LIST, load_tensors as load

TASKS = ",".join(TASK_LIST)


def save(folder, tensors, config_from):
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(config_from) / "config.json", folder / "config.json")
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base")
    p.add_argument("expert")
    p.add_argument("--weld", default=str(Path(__file__).resolve().parents[2] / "build/weld"))
    p.add_argument("--held-out", default="200")
    args = p.parse_args()
    base, expert = load(args.base), load(args.expert)
    if base.keys() != expert.keys():
        sys.exit(f"{args.base} and {args.expert} hold different tensors")
    n_layers = 1 + max(int(m.group(1)) for k in base if (m := re.search(r"layers\.(\d+)\.", k)))
    parts = {"whole": r".", "attention": r"self_attn", "mlp": r"\.mlp\.", "embeddings+lm_head": r"embed|lm_head",
             "norms": r"norm"}
    parts.update({f"layer {i}": rf"layers\.{i}\." for i in range(n_layers)})
    print(f"| part | {TASKS.replace(',', ' | ')} |\n|---|" + "---:|" * len(TASKS.split(",")))
    with tempfile.TemporaryDirectory(prefix="weld-parts-") as tmp:
        for part, pattern in parts.items():
            mixed = {k: expert[k] if re.search(pattern, k) else base[k] for k in base}
            save(Path(tmp) / "m", mixed, args.base)
            r = subprocess.run([args.weld, "eval", str(Path(tmp) / "m"), "--tasks", TASKS, "--held-out",
                                args.held_out, "--threads", "1", "--json"], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"weld eval failed: {r.stderr.strip()}")
            acc = json.loads(r.stdout)["tasks"]
            print(f"| {part} | " + " | ".join(f"{100 * acc[t]['accuracy']:.1f}" for t in TASKS.split(",")) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
