"""Words as sequences of noisy glyph features: a synthetic scene-text-recognition task with no images.

The lexicon is the set of lowercase words of ``pydoc_data.topics`` (Python's help texts, shipped with Python).
A word is "rendered" as a sequence of ``width`` feature frames (``dim`` features each): every letter has a
fixed random prototype vector, each letter's frame is its prototype plus Gaussian noise, a share of the frames
is occluded (zeroed), and the word starts at a random offset (jitter) in a frame sequence padded with zeros.
A recogniser must read the letters back as tokens. :func:`render_lines` is the ``images`` view: the same
words drawn by Pillow as noisy text-line images.

Tokens: ``EOS`` = 0, letters ``a``–``z`` = 1–26, ``MASK`` = 27, ``BOS`` = 28 (``VOCAB`` = 29). Targets are a
word's letters then ``EOS``, padded with ``EOS`` to ``max_len + 1`` (``lengths`` = letters + 1 count the real
tokens).
"""

from __future__ import annotations

import re
import string

import torch

ALPHABET = string.ascii_lowercase
EOS, MASK, BOS = 0, len(ALPHABET) + 1, len(ALPHABET) + 2
VOCAB = len(ALPHABET) + 3


def lexicon(min_len: int = 2, max_len: int = 10) -> list[str]:
    """Sorted distinct lowercase ASCII words of ``pydoc_data.topics`` with ``min_len``–``max_len`` letters."""
    from pydoc_data.topics import topics

    text = " ".join(topics.values())
    words = {w for w in re.findall(r"\b[a-z]+\b", text) if min_len <= len(w) <= max_len}
    return sorted(words)


def split(words: list[str], n_test: int, generator: torch.Generator | None = None) -> tuple[list[str], list[str]]:
    """A seeded split of distinct words: (train words, ``n_test`` test words); no test word is a train word."""
    order = torch.randperm(len(words), generator=generator).tolist()
    return [words[i] for i in order[n_test:]], [words[i] for i in order[:n_test]]


def encode(words: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """words → target tokens (N, max_len + 1) (letters, EOS, EOS padding) and lengths (N,) (letters + 1)."""
    tokens = torch.full((len(words), max_len + 1), EOS, dtype=torch.long)
    for i, w in enumerate(words):
        if len(w) > max_len:
            raise ValueError(f"word {w!r} longer than max_len={max_len}")
        tokens[i, :len(w)] = torch.tensor([ALPHABET.index(c) + 1 for c in w])
    return tokens, torch.tensor([len(w) + 1 for w in words])


def decode(tokens: torch.Tensor) -> list[str]:
    """(N, L) tokens → strings cut at the first EOS; ``MASK`` reads ``_``, ``BOS`` ``^``."""
    out = []
    for row in tokens.tolist():
        chars = []
        for t in row:
            if t == EOS:
                break
            chars.append(ALPHABET[t - 1] if 1 <= t <= len(ALPHABET) else "_" if t == MASK else "^")
        out.append("".join(chars))
    return out


def prototypes(dim: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """One unit-variance random feature vector per letter: (26, dim)."""
    return torch.randn(len(ALPHABET), dim, generator=generator)


def render(words: list[str], protos: torch.Tensor, width: int, noise: float = 0.5, occlusion: float = 0.1,
           jitter: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Glyph features of each word: (N, width, dim) float, a fresh draw of noise, occlusion and offset per call.

    Frame ``offset + j`` holds letter j's prototype + ``noise`` · N(0, 1); each letter frame is zeroed with
    probability ``occlusion``; ``offset`` is uniform in [0, jitter]; other frames are zero."""
    n, dim = len(words), protos.shape[1]
    if any(len(w) + jitter > width for w in words):
        raise ValueError(f"width={width} cannot hold the longest word plus jitter={jitter}")
    feats = torch.zeros(n, width, dim)
    offsets = torch.randint(0, jitter + 1, (n,), generator=generator)
    eps = torch.randn(n, width, dim, generator=generator)
    keep = torch.rand(n, width, generator=generator) >= occlusion
    for i, w in enumerate(words):
        ids = torch.tensor([ALPHABET.index(c) for c in w])
        frames = protos[ids] + noise * eps[i, :len(w)]
        o = int(offsets[i])
        feats[i, o:o + len(w)] = frames * keep[i, :len(w), None]
    return feats


def render_lines(words: list[str], size: int = 64, noise: float = 0.3, occlusion: float = 0.1, jitter: int = 4,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Words drawn by Pillow (its default font, 10 px) as white text on black, one line centred vertically in a
    ``size`` × ``size`` image, at a random horizontal offset in [0, jitter]: (N, 1, size, size) float in about
    [0, 1], plus ``noise`` · N(0, 1) per pixel; each letter's column span is blacked out with probability
    ``occlusion``. The ``images`` view of the glyph task."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=10)
    offsets = torch.randint(0, jitter + 1, (len(words),), generator=generator).tolist()
    out = torch.zeros(len(words), 1, size, size)
    for i, w in enumerate(words):
        img = Image.new("L", (size, size))
        draw = ImageDraw.Draw(img)
        x = offsets[i]
        if draw.textlength(w, font=font) + x > size:
            raise ValueError(f"word {w!r} does not fit a {size}-pixel line")
        draw.text((x, size // 2 - 6), w, fill=255, font=font)
        line = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size).float() / 255
        hide = torch.rand(len(w), generator=generator) < occlusion
        for j in hide.nonzero().flatten().tolist():
            left = x + draw.textlength(w[:j], font=font)
            line[:, int(left):int(left + draw.textlength(w[j], font=font)) + 1] = 0.0
        out[i, 0] = line
    return out + noise * torch.randn(out.shape, generator=generator)


__all__ = ["ALPHABET", "BOS", "EOS", "MASK", "VOCAB", "decode", "encode", "lexicon", "prototypes", "render",
           "render_lines", "split"]
