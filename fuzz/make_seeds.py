#!/usr/bin/env python3
"""Writes the small seed corpus for fuzz_safetensors into fuzz/seeds/ (run from the repo root)."""
import json
import struct
from pathlib import Path


def safetensors(tensors, metadata=None):
    header, data, offset = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(payload)]}
        data += payload
        offset += len(payload)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


seeds = Path(__file__).parent / "seeds"
seeds.mkdir(exist_ok=True)
(seeds / "two_tensors.safetensors").write_bytes(safetensors(
    [("w", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)), ("b", "BF16", [3], b"\x80\x3f" * 3)],
    {"format": "pt"}))
(seeds / "odd_tensors.safetensors").write_bytes(safetensors(
    [("s", "I64", [], struct.pack("<q", -5)), ("e", "F16", [0, 4], b""), ("m", "U8", [3], b"\x01\x02\x03")]))
(seeds / "index.json").write_text(json.dumps({
    "metadata": {"total_size": 28},
    "weight_map": {"w": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
}, indent=2) + "\n")
(seeds / "index_subdir.json").write_text('{"weight_map":{"a":"sub/x.safetensors","b":"./y.safetensors"}}\n')
