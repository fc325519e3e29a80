#!/usr/bin/python3
"""Compares two merged model folders (weld's and torch_merge.py's) tensor by tensor.

    compare_torch.py A B [--base DIR] [--max-tensors K] [--summary NAME]

For every tensor of B (in file order, the first K): max |A - B|, the share of elements that differ
by more than one bfloat16 ulp (of the larger magnitude), and, with --base, the random methods'
statistics: the share of elements changed from the base and mean |A - base| vs mean |B - base|.
--summary prints one line (worst tensor) headed NAME instead of one line per tensor.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_merge import SafetensorsFolder  # noqa: E402


def ulp_bf16(x):
    """One bfloat16 ulp at |x| (the spacing of bfloat16 numbers: 2^(exponent - 7))."""
    mag = x.abs().clamp(min=torch.finfo(torch.bfloat16).tiny)
    return torch.pow(2.0, torch.floor(torch.log2(mag)) - 7)


def compare(a, b, base):
    diff = (a - b).abs()
    over = (diff > ulp_bf16(torch.maximum(a.abs(), b.abs())) * 1.0001).float().mean().item()
    row = {"max": diff.max().item(), "over": over}
    if base is not None:
        row["changed_a"] = (a != base).float().mean().item()
        row["changed_b"] = (b != base).float().mean().item()
        row["mean_a"] = (a - base).abs().mean().item()
        row["mean_b"] = (b - base).abs().mean().item()
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--base")
    p.add_argument("--max-tensors", type=int, default=0)
    p.add_argument("--summary")
    args = p.parse_args()
    a, b = SafetensorsFolder(args.a), SafetensorsFolder(args.b)
    base = SafetensorsFolder(args.base) if args.base else None
    names = b.order[: args.max_tensors] if args.max_tensors else b.order
    rows = []
    for n in names:
        row = compare(a.get(n), b.get(n), base.get(n) if base else None)
        rows.append((n, row))
        if not args.summary:
            extra = ""
            if base:
                extra = (f"  changed {row['changed_a']:.4f}/{row['changed_b']:.4f}"
                         f"  mean|d| {row['mean_a']:.3e}/{row['mean_b']:.3e}")
            print(f"{n:50s} max {row['max']:.3e}  >1ulp {row['over']:.5f}{extra}")
    if args.summary:
        worst = max(rows, key=lambda r: r[1]["max"])
        over = max(r[1]["over"] for r in rows)
        line = f"{args.summary:18s} max|diff| {worst[1]['max']:.3e} ({worst[0]})  worst >1ulp share {over:.5f}"
        if base:
            ratio = max(abs(r[1]["mean_a"] / r[1]["mean_b"] - 1) for r in rows if r[1]["mean_b"] > 0)
            ch = max(abs(r[1]["changed_a"] - r[1]["changed_b"]) for r in rows)
            line += f"  changed-share gap {ch:.4f}  mean|delta| rel gap {ratio:.4f}"
        print(line)


if __name__ == "__main__":
    main()
