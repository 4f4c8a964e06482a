"""A tiny CLIP byte-pair vocabulary written to disk, so CLIP tokenizers (and the tiny random CLIP and
Stable-Diffusion models built on them) work offline, without a model hub."""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.io import write_text


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tiny_clip_vocab(folder: Path, words: list[str]) -> tuple[Path, Path]:
    """A small CLIP BPE vocabulary: every byte symbol (plain and word-final ``</w>``) plus left-to-right
    merges building each of ``words`` into one token. Returns (vocab.json, merges.txt)."""
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in sorted(set(words)):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        cur = parts[0]
        for nxt in parts[1:]:
            merge, cur = f"{cur} {nxt}", cur + nxt
            if merge not in merges:
                merges.append(merge)
            if cur not in vocab:
                vocab.append(cur)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "vocab.json", json.dumps({t: i for i, t in enumerate(vocab)}))
    write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"
