#!/usr/bin/env python3
"""Writes the small seed corpora for fuzz_safetensors into fuzz/seeds/ and for fuzz_gguf into
fuzz/seeds-gguf/ (run from the repo root)."""
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


def gguf_string(s):
    return struct.pack("<Q", len(s)) + s.encode()


def gguf(metadata, tensors, alignment=32):
    """metadata: (key, type, packed value) triples; tensors: (name, dims, ggml type, payload)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, value_type, value in metadata:
        out += gguf_string(key) + struct.pack("<I", value_type) + value
    offset, data = 0, b""
    for name, dims, ggml_type, payload in tensors:
        out += gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", ggml_type, offset)
        padded = payload + b"\0" * (-len(payload) % alignment)
        data += padded
        offset += len(padded)
    out += b"\0" * (-len(out) % alignment)
    return out + data


gguf_seeds = Path(__file__).parent / "seeds-gguf"
gguf_seeds.mkdir(exist_ok=True)
tokens = struct.pack("<IQ", 8, 3) + b"".join(gguf_string(t) for t in ["a", "b", "ab"])
(gguf_seeds / "f32_f16.gguf").write_bytes(gguf(
    [("general.architecture", 8, gguf_string("llama")), ("llama.block_count", 4, struct.pack("<I", 1)),
     ("tokenizer.ggml.tokens", 9, tokens), ("llama.rope.freq_base", 6, struct.pack("<f", 10000.0))],
    [("token_embd.weight", [4, 3], 0, struct.pack("<12f", *range(12))),
     ("output_norm.weight", [4], 1, b"\x00\x3c" * 4)]))
q8_block = struct.pack("<e", 0.5) + bytes(range(32))
(gguf_seeds / "q8_0_aligned.gguf").write_bytes(gguf(
    [("general.alignment", 4, struct.pack("<I", 64)), ("flag", 7, b"\x01"),
     ("scores", 9, struct.pack("<IQ", 6, 2) + struct.pack("<2f", -1.0, -2.0))],
    [("blk.0.attn_q.weight", [32, 2], 8, q8_block * 2), ("bf", [2, 1, 1, 1], 30, b"\x80\x3f" * 2)],
    alignment=64))
