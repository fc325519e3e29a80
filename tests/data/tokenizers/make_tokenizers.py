#!/usr/bin/python3
"""Writes the test tokenizers of weld's tokenizer tests, deterministically (no randomness that
depends on the machine): lines.txt, a few hundred lines of mixed text, and two small BPE
tokenizers trained on it and on weld's docs:

  llama3/   byte-level BPE with Llama-3's split regex (tokenizer.json, tokenizer_config.json)
  llama2/   SentencePiece-style BPE with byte fallback, as Llama-2 and Mistral

Run from the repository root: /usr/bin/python3 tests/data/tokenizers/make_tokenizers.py
"""
import collections
import json
import pathlib
import random
import re

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
MERGES = 3000

WORDS = """the model merges weights of a base and its fine-tunes into one checkpoint without training
tokens are split by a regular expression and then merged pair by pair until no merge applies
numbers like 12345 and 3.14159 or 2024-06-01 are split into groups of digits""".split()
ACCENTS = ["café", "naïve", "façade", "Ærøskøbing", "Größe", "straße", "tiếng Việt", "São Paulo", "résumé",
           "Dvořák", "Łódź", "ﬁnancial", "ÉCOLE", "crème brûlée", "Ἀθῆναι", "Москва", "Καλημέρα"]
CJK = ["你好，世界", "机器学习模型", "日本語のテキスト", "東京タワー", "한국어 문장", "漢字と仮名", "鑫淼焱垚"]
ARABIC = ["مرحبا بالعالم", "اللغة العربية", "شكرا جزيلا", "עברית טקסט"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🏳️‍🌈", "❤️", "🤖", "🧑🏿‍💻", "✨", "🐍🦀"]
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>", "<s>", "</s>",
            "[INST]", "[/INST]", "<|im_start|>", "<unk>", "<tool>", "<|end_of_text|>"]
PUNCT = ["...", "!?", "—", "«quoted»", "\"double\"", "'single'", "(paren)", "{braces}", "a+b=c", "x_y",
         "it's", "we'll", "THEY'RE", "don't", "#include <vector>", "https://example.com/a?b=c"]
SPACES = ["  ", "   ", "\t", "\t\t", " \t ", "    "]


def lines():
    rng = random.Random(15)
    out = [
        "Hello world",
        "  leading spaces and trailing spaces   ",
        "\ttab at the start",
        "digits 0 1 12 123 1234 12345 123456 and 3.14159",
        "café naïve façade",
        "你好，世界",
        "مرحبا بالعالم",
        "family 👨‍👩‍👧‍👦 flag 🇫🇷 thumbs 👍🏽",
        "<|begin_of_text|>Hello<|eot_id|>",
        "<s>[INST] a question [/INST] an answer</s>",
        "a <tool> b",
        "x    y\t\tz",
        "I'm sure it's fine, they've said we'd go",
    ]
    pools = [WORDS, WORDS, WORDS, ACCENTS, CJK, ARABIC, EMOJI, SPECIALS, PUNCT]
    while len(out) < 320:
        parts = []
        for _ in range(rng.randint(1, 14)):
            pool = rng.choice(pools)
            parts.append(rng.choice(pool))
            parts.append(rng.choice(SPACES) if rng.random() < 0.15 else " ")
        if rng.random() < 0.3:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
        out.append("".join(parts).rstrip(" ") if rng.random() < 0.8 else "".join(parts))
    return out


def corpus(text_lines):
    docs = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(text_lines) + "\n" + (ROOT / "README.md").read_text(encoding="utf-8") + "\n".join(docs)


def train(words, merges_wanted, alphabet):
    """BPE training: the most frequent adjacent pair merged each round (ties by first seen)."""
    vocab = list(alphabet)
    seqs = [list(w) for w in words]
    counts = collections.Counter(words)
    freq = [counts[w] for w in words]
    pairs = collections.Counter()
    where = collections.defaultdict(set)
    for i, s in enumerate(seqs):
        for a, b in zip(s, s[1:]):
            pairs[(a, b)] += freq[i]
            where[(a, b)].add(i)
    merges = []
    known = set(vocab)
    while len(merges) < merges_wanted and pairs:
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        if pairs[best] < 2:
            break
        merges.append(best)
        merged = best[0] + best[1]
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        for i in sorted(where.pop(best, ())):
            s = seqs[i]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] -= freq[i]
                if pairs[(a, b)] <= 0:
                    del pairs[(a, b)]
            j, t = 0, []
            while j < len(s):
                if j + 1 < len(s) and (s[j], s[j + 1]) == best:
                    t.append(merged)
                    j += 2
                else:
                    t.append(s[j])
                    j += 1
            seqs[i] = t
            for a, b in zip(t, t[1:]):
                pairs[(a, b)] += freq[i]
                where[(a, b)].add(i)
        pairs.pop(best, None)
    return vocab, merges


def unique(words):
    return list(dict.fromkeys(words))


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Python's re has no \p{...}: an approximation of the split above, good enough to train merges.
TRAIN_SPLIT = re.compile(r"'(?:s|t|re|ve|m|ll|d)|[^\r\n\w]?[^\W\d_]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def added(id_, content, special=True, lstrip=False, rstrip=False, normalized=False):
    return {"id": id_, "content": content, "single_word": False, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


def template(bos, bos_id):
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def llama3(text):
    byte_char = bytes_to_unicode()
    words = [("".join(byte_char[b] for b in w.encode("utf-8"))) for w in TRAIN_SPLIT.findall(text)]
    alphabet = [byte_char[b] for b in range(256)]
    vocab, merges = train(words, MERGES, alphabet)
    n = len(vocab)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    added_tokens = [added(n + i, s) for i, s in enumerate(specials)]
    added_tokens.append(added(n + len(specials), "<tool>", special=False, lstrip=True, rstrip=True, normalized=True))
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            template("<|begin_of_text|>", n)]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {t: i for i, t in enumerate(vocab)}, "merges": [[a, b] for a, b in merges]},
    }
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True,
              "model_max_length": 8192, "tokenizer_class": "PreTrainedTokenizerFast",
              "chat_template": (ROOT / "tests/data/chat_templates/llama3_instruct.jinja").read_text(encoding="utf-8")}
    return tokenizer, config


def llama2(text):
    meta = "\u2581"
    words = []
    for line in text.split("\n"):
        line = meta + line.replace(" ", meta)
        words += [w for w in re.split("(?=" + meta + ")", line) if w]
    chars = collections.Counter(c for w in words for c in w)
    # Characters seen at least 3 times are in the vocabulary; rarer ones go through byte fallback.
    alphabet = sorted(c for c, k in chars.items() if k >= 3)
    head = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    vocab, merges = train([w for w in words if all(c in set(alphabet) for c in w)], MERGES, head + alphabet)
    n = len(vocab)
    added_tokens = [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>"), added(n, "<|im_start|>"),
                    added(n + 1, "[INST]", special=False, rstrip=True), added(n + 2, "<tool>", special=False,
                                                                                normalized=True)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": meta},
                                                          {"type": "Replace", "pattern": {"String": " "},
                                                           "content": meta}]},
        "pre_tokenizer": None,
        "post_processor": template("<s>", 1),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": meta}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(vocab)}, "merges": [[a, b] for a, b in merges]},
    }
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
              "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": False,
              "tokenizer_class": "LlamaTokenizer",
              "chat_template": (ROOT / "tests/data/chat_templates/mistral_instruct.jinja").read_text(encoding="utf-8")}
    return tokenizer, config


def write(name, tokenizer, config):
    folder = HERE / name
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, separators=(",", ":")) + "\n",
                                           encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n",
                                                  encoding="utf-8")


def main():
    text_lines = lines()
    (HERE / "lines.txt").write_text("\n".join(text_lines) + "\n", encoding="utf-8")
    text = corpus(text_lines)
    write("llama3", *llama3(text))
    write("llama2", *llama2(text))


if __name__ == "__main__":
    main()
