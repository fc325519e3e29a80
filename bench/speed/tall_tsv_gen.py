#!/usr/bin/python3
"""One tall tensor (65536 x 1024, float32) and a 1-D one in a base + 3 fine-tunes, each fine-tune a
decaying-spectrum rank-64 change plus noise, and the tsv recipe that merges them (r.yml): the
case of docs/performance.md "tsv out of core".

    bench/speed/tall_tsv_gen.py OUT && weld merge OUT/r.yml OUT/merged --memory-budget 1GB
"""
import json
import os
import struct
import sys

import numpy as np

ROWS, COLS, RANK = 65536, 1024, 64


def write(folder, tensors):
    os.makedirs(folder, exist_ok=True)
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        blob = array.astype(np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main(out):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((ROWS, COLS), dtype=np.float32) * 0.02
    write(os.path.join(out, "base"), {"model.embed_tokens.weight": base, "model.norm.weight": np.ones(COLS, np.float32)})
    for t in range(3):
        u = rng.standard_normal((ROWS, RANK), dtype=np.float32)
        v = rng.standard_normal((RANK, COLS), dtype=np.float32)
        s = (0.9 ** np.arange(RANK)).astype(np.float32) * 1e-4
        delta = (u * s) @ v + rng.standard_normal((ROWS, COLS), dtype=np.float32) * 1e-4
        write(os.path.join(out, f"ft{t}"), {"model.embed_tokens.weight": base + delta,
                                            "model.norm.weight": np.ones(COLS, np.float32) + 0.01 * t})
    with open(os.path.join(out, "r.yml"), "w") as f:
        f.write(f"merge_method: tsv\nbase_model: {out}/base\nmodels:\n  - model: {out}/ft0\n"
                f"  - model: {out}/ft1\n    parameters: {{weight: 0.5}}\n  - model: {out}/ft2\ndtype: float32\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tall_tsv_gen.py OUT")
    main(os.path.abspath(sys.argv[1]))
