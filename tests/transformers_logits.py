#!/usr/bin/env python3
"""Logits of Hugging Face transformers' own model classes for weld-written model folders.

    transformers_logits.py OUT_DIR MODEL_DIR...

For each MODEL_DIR, loads it with AutoModelForCausalLM (LlamaForCausalLM, Qwen2ForCausalLM, ...)
in float32 with eager attention, runs the sequences below and writes OUT_DIR/<name>-logits.json:
{"model", "class", "transformers", "torch", "sequences": [[ids]], "logits": [[[float]]]}.
tests/nn_transformers_test.cpp compares weld's logits with these files (max |diff| <= 1e-4).
Needs torch and transformers, so it runs where they are installed, not in the test suite.
"""
import json
import os
import sys

import torch
import transformers


def byte_ids(text):
    return [256] + list(text.encode())  # weld's byte tokenizer: BOS 256, then the bytes


SEQUENCES = [byte_ids("add:123+45=168\n"), byte_ids("rev:abcde=edcba\n"), byte_ids("brk:([)]=no\n")]


def main():
    out_dir, models = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    for path in models:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, torch_dtype=torch.float32, attn_implementation="eager")
        model.eval()
        logits = []
        with torch.no_grad():
            for seq in SEQUENCES:
                out = model(torch.tensor([seq])).logits[0]
                logits.append([[float("%.7g" % v) for v in row] for row in out.tolist()])
        name = os.path.basename(os.path.normpath(path))
        record = {"model": name, "class": type(model).__name__, "transformers": transformers.__version__,
                  "torch": torch.__version__, "sequences": SEQUENCES, "logits": logits}
        with open(os.path.join(out_dir, name + "-logits.json"), "w") as f:
            json.dump(record, f)
        print(f"{name}: {type(model).__name__}, {len(SEQUENCES)} sequences")


if __name__ == "__main__":
    main()
