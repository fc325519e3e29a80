"""NumPy reference for tests/lora_test.cpp: the rank-k truncated SVD of fine-tune minus base.

usage: lora_reference.py BASE_DIR FINETUNE_DIR K TENSOR...
prints {tensor: {"recon": [...], "s": [...]}}: the best rank-K approximation U_k S_k V_kᵀ of
Δ = W_finetune − W_base (row-major, flattened) and its K largest singular values, in float64.
Reads model.safetensors (F32) with the standard library and NumPy only.
"""
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"])
    return tensors


def main():
    base_dir, finetune_dir, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
    base = read_safetensors(base_dir + "/model.safetensors")
    finetune = read_safetensors(finetune_dir + "/model.safetensors")
    out = {}
    for name in sys.argv[4:]:
        delta = finetune[name].astype(np.float64) - base[name].astype(np.float64)
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        recon = (u[:, :k] * s[:k]) @ vt[:k]
        out[name] = {"recon": recon.ravel().tolist(), "s": s[:k].tolist()}
    print(json.dumps(out))


main()
