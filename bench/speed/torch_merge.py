#!/usr/bin/python3
"""The speed benchmark's PyTorch baseline: the same merges done the way the Python tools
(mergekit) do them, tensor by tensor.

    torch_merge.py METHOD OUT --base DIR --models DIR [DIR ...] [--weight W] [--density D] [--t T]
                   [--seed S] [--threads N] [--max-tensors K]

For each tensor of the base model (in file order) it loads the tensor of every model, computes
in float32 with plain PyTorch operations, converts to bfloat16 and writes safetensors shards
(at most 5 GB each, like weld's default, with model.safetensors.index.json when there is more
than one). Debian's python3-torch (1.13) has no safetensors library, so the files are read
through a small json+struct parser and torch.frombuffer over an mmap, and written with
json+struct and the tensor's bytes.

Methods, as mergekit computes them (generalized_task_arithmetic.py, sparsify.py, slerp.py):
  linear           sum(w_i * M_i) / sum(w_i)                 (the models; the base takes no part)
  task_arithmetic  B + sum(w_i * (M_i - B))
  ties             magnitude trim of each delta to the top density*n by |delta| (a full
                   torch.argsort, as mergekit's sparsify.magnitude), sign election on the sum of
                   the weighted deltas, sum of the agreeing weighted deltas / sum of their weights
  dare_ties        torch.bernoulli(density) drop, L1 rescale (mergekit's rescale_norm="l1"), then
                   the TIES sign election and sum (normalize false, mergekit's default for DARE)
  slerp            B and one model, flattened, in float32; lerp when |cos| > 0.9995
"""
import argparse
import json
import mmap
import os
import struct
import sys
import warnings

import torch

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
SIZES = {"BF16": 2, "F16": 2, "F32": 4}


class SafetensorsFolder:
    """A model folder's safetensors files, memory-mapped: name -> (mmap, dtype, shape, offset)."""

    def __init__(self, folder):
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.tensors = {}
        self.order = []
        self._maps = []
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps.append(mm)
            (n,) = struct.unpack("<Q", mm[:8])
            header = json.loads(mm[8 : 8 + n])
            header.pop("__metadata__", None)
            items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
            for tname, info in items:
                begin, end = info["data_offsets"]
                self.tensors[tname] = (mm, info["dtype"], info["shape"], 8 + n + begin, end - begin)
                self.order.append(tname)

    def get(self, name):
        """The tensor as float32 (a copy, as safetensors' get_tensor + .float() gives)."""
        mm, dtype, shape, offset, nbytes = self.tensors[name]
        count = nbytes // SIZES[dtype]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "buffer is not writable": we only read it
            t = torch.frombuffer(mm, dtype=DTYPES[dtype], count=count, offset=offset)
        return t.reshape(shape).float()


class SafetensorsWriter:
    """Writes tensors in a planned order into shards of at most max_shard bytes."""

    def __init__(self, folder, specs, max_shard=5_000_000_000):
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        shards, current, size = [], [], 0
        for name, shape in specs:
            nbytes = 2 * prod(shape)
            if current and size + nbytes > max_shard:
                shards.append(current)
                current, size = [], 0
            current.append((name, shape, nbytes))
            size += nbytes
        shards.append(current)
        self.shards = shards
        self.n = len(shards)
        self.shard_of = {}
        self.files = []
        weight_map = {}
        for k, shard in enumerate(shards):
            fname = "model.safetensors" if self.n == 1 else f"model-{k + 1:05d}-of-{self.n:05d}.safetensors"
            header, offset = {}, 0
            for name, shape, nbytes in shard:
                header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + nbytes]}
                offset += nbytes
                self.shard_of[name] = k
                weight_map[name] = fname
            text = json.dumps(header, separators=(",", ":")).encode()
            text += b" " * ((8 - len(text) % 8) % 8)
            f = open(os.path.join(folder, fname), "wb")
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            self.files.append(f)
        if self.n > 1:
            total = sum(nb for shard in shards for _, _, nb in shard)
            with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    def write(self, name, tensor):
        """Tensors must come in the planned order."""
        data = tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
        self.files[self.shard_of[name]].write(memoryview(data).cast("B"))

    def close(self):
        for f in self.files:
            f.close()


def prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# --- mergekit's sparsification (sparsify.py) ---------------------------------------------------

def rescale_sum(tensor, mask, norm):
    if norm is None:
        return tensor * mask
    org = tensor.abs().sum()
    new = (tensor * mask).abs().sum()
    if org >= 1e-8 and new >= 1e-8:
        tensor = tensor * (org / new)
    return tensor * mask


def magnitude(tensor, density, rescale_norm=None):
    if density >= 1:
        return tensor
    k = int(density * tensor.numel())
    assert k > 0
    mask = torch.zeros_like(tensor)
    w = tensor.abs().view(-1)
    topk = torch.argsort(w, descending=True)[:k]
    mask.view(-1)[topk] = 1
    return rescale_sum(tensor, mask, rescale_norm)


def bernoulli(tensor, density, rescale_norm="l1"):
    if density >= 1:
        return tensor
    mask = torch.bernoulli(torch.full_like(tensor, density))
    return rescale_sum(tensor, mask, rescale_norm)


# --- merges ---------------------------------------------------------------------------------

def merge_linear(name, base, models, weights, args):
    tensors = torch.stack([m.get(name) for m in models])
    w = torch.tensor(weights).view(-1, *([1] * (tensors.dim() - 1)))
    return (tensors * w).sum(dim=0) / w.sum()


def merge_generalized(name, base, models, weights, args, sparsify, consensus, normalize):
    b = base.get(name)
    deltas = []
    for m in models:
        d = m.get(name) - b
        if sparsify is not None:
            d = sparsify(d, args.density)
        deltas.append(d)
    deltas = torch.stack(deltas)
    w = torch.tensor(weights, dtype=deltas.dtype).view(-1, *([1] * (deltas.dim() - 1)))
    weighted = deltas * w
    if consensus:
        sign = (weighted.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1
        mask = weighted.sign() == sign
        mixed = (weighted * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return b + mixed


def merge_slerp(name, base, models, weights, args, eps=1e-8, threshold=0.9995):
    v0 = base.get(name)
    v1 = models[0].get(name)
    t = args.t
    n0 = v0 / max(v0.norm().item(), eps)
    n1 = v1 / max(v1.norm().item(), eps)
    dot = (n0 * n1).sum().item()
    if abs(dot) > threshold:
        return (1 - t) * v0 + t * v1
    theta0 = torch.arccos(torch.tensor(dot))
    sin0 = torch.sin(theta0)
    theta_t = theta0 * t
    s0 = torch.sin(theta0 - theta_t) / sin0
    s1 = torch.sin(theta_t) / sin0
    return s0 * v0 + s1 * v1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=["linear", "task_arithmetic", "ties", "dare_ties", "slerp"])
    p.add_argument("out")
    p.add_argument("--base", required=True)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--t", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--max-tensors", type=int, default=0, help="merge only the first K tensors (testing)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = SafetensorsFolder(args.base)
    models = [SafetensorsFolder(m) for m in args.models]
    names = base.order[: args.max_tensors] if args.max_tensors else base.order
    weights = [args.weight] * len(models)

    if args.method == "linear":
        fn = merge_linear
    elif args.method == "task_arithmetic":
        fn = lambda n, b, ms, w, a: merge_generalized(n, b, ms, w, a, None, False, False)
    elif args.method == "ties":
        fn = lambda n, b, ms, w, a: merge_generalized(n, b, ms, w, a, magnitude, True, True)
    elif args.method == "dare_ties":
        fn = lambda n, b, ms, w, a: merge_generalized(n, b, ms, w, a, bernoulli, True, False)
    else:
        if len(models) != 1:
            sys.exit("slerp: exactly one model besides the base")
        fn = merge_slerp

    writer = SafetensorsWriter(args.out, [(n, base.tensors[n][2]) for n in names])
    for n in names:
        writer.write(n, fn(n, base, models, weights, args))
    writer.close()
    with open(os.path.join(args.base, "config.json")) as f:
        config = f.read()
    with open(os.path.join(args.out, "config.json"), "w") as f:
        f.write(config)


if __name__ == "__main__":
    main()
