"""The word tokenizer of the synthetic captions: whitespace words ↔ ids in a fixed vocabulary, ``<pad>`` = 0.

Every captioned generator (``scenes`` for ``toy_sd``, ``refer`` for the toy CLIP and the grounding models)
declares its vocabulary as a tuple whose first entry is ``"<pad>"``.
"""

from __future__ import annotations

import torch

PAD = 0


def encode(texts: list[str], vocab: tuple[str, ...], length: int) -> torch.Tensor:
    """Texts → (N, length) int64 ids, right-padded with ``<pad>``; an unknown word or a text longer than
    ``length`` words raises a one-line ValueError."""
    index = {w: i for i, w in enumerate(vocab)}
    out = torch.full((len(texts), length), PAD, dtype=torch.long)
    for i, text in enumerate(texts):
        words = text.split()
        if len(words) > length:
            raise ValueError(f"a caption has at most {length} words, got {text!r}")
        for j, w in enumerate(words):
            if w not in index or index[w] == PAD:
                raise ValueError(f"unknown word {w!r}; the vocabulary is {', '.join(vocab[1:])}")
            out[i, j] = index[w]
    return out


def decode(ids, vocab: tuple[str, ...]) -> str:
    """One row of ids → its words, ``<pad>`` left out."""
    return " ".join(vocab[int(i)] for i in ids if int(i) != PAD)
