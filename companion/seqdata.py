"""Synthetic sequence tasks with exact answers, and a character corpus from text that ships with Python.

Targets use -100 (the ``F.cross_entropy`` ignore index) wherever there is nothing to predict.
Everything is vectorised and deterministic in the ``generator``'s seed.
"""

from __future__ import annotations

import torch

IGNORE = -100


def mqar(n: int, num_pairs: int = 8, seq_len: int = 64, vocab: int = 64, num_queries: int | None = None,
         generator: torch.Generator | None = None, filler: str = "shared") -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall with filler (Zoology-style), answers only in the targets.

    Layout of one sequence of ``seq_len`` tokens: a context of ``seq_len - 2*num_queries`` tokens cut into
    2-token slots; ``num_pairs`` random slots hold a (key, value) pair, the others hold filler; then
    ``num_queries`` (key, value) query pairs whose keys are drawn (without replacement while possible) from
    the sequence's pairs. Keys come from ``[0, vocab//2)`` (distinct within a sequence), values from
    ``[vocab//2, vocab)``. ``filler="shared"``: random tokens of the whole vocabulary, never one of the
    sequence's keys (so every query has exactly one answer); ``"distinct"``: the single token ``vocab``
    (the model then needs ``vocab + 1`` embeddings).

    Returns tokens (n, seq_len) long and targets (n, seq_len) long: at each query-key position the value that
    follows it (next-token prediction), -100 elsewhere. Chance accuracy is ``1 / (vocab - vocab//2)``.
    """
    num_queries = num_pairs if num_queries is None else num_queries
    half = vocab // 2
    ctx = seq_len - 2 * num_queries
    if ctx < 2 * num_pairs or ctx % 2:
        raise ValueError(f"seq_len - 2*num_queries = {ctx} must be even and >= 2*num_pairs = {2 * num_pairs}")
    if num_pairs > half or num_pairs < 1:
        raise ValueError(f"num_pairs must be in [1, vocab//2={half}], got {num_pairs}")
    if filler not in ("shared", "distinct"):
        raise ValueError(f"filler must be 'shared' or 'distinct', got {filler!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    rows = torch.arange(n)[:, None]
    keys = torch.rand(n, half, generator=g).argsort(-1)[:, :num_pairs]  # (n, P) distinct keys
    values = torch.randint(half, vocab, (n, num_pairs), generator=g)  # (n, P)

    num_slots = ctx // 2
    if filler == "shared":
        context = torch.randint(0, vocab, (n, ctx), generator=g)
        collides = (context[:, :, None] == keys[:, None, :]).any(-1)  # filler must not look like a key
        context = torch.where(collides, torch.randint(half, vocab, (n, ctx), generator=g), context)
    else:
        context = torch.full((n, ctx), vocab, dtype=torch.long)
    slots = torch.rand(n, num_slots, generator=g).argsort(-1)[:, :num_pairs]  # (n, P) slot of each pair
    context[rows, 2 * slots] = keys
    context[rows, 2 * slots + 1] = values

    if num_queries <= num_pairs:
        which = torch.rand(n, num_pairs, generator=g).argsort(-1)[:, :num_queries]
    else:
        which = torch.randint(0, num_pairs, (n, num_queries), generator=g)
    q_keys, q_values = keys.gather(1, which), values.gather(1, which)  # (n, Q)
    queries = torch.stack([q_keys, q_values], dim=-1).reshape(n, 2 * num_queries)
    tokens = torch.cat([context, queries], dim=1)

    targets = torch.full_like(tokens, IGNORE)
    q_pos = ctx + 2 * torch.arange(num_queries)
    targets[:, q_pos] = q_values
    return tokens, targets


def char_corpus(max_chars: int | None = None) -> str:
    """English help text shipped with CPython (``pydoc_data.topics``, topics in sorted order): deterministic
    for a given Python version. Falls back to the docstrings of a fixed list of stdlib modules."""
    try:
        from pydoc_data.topics import topics

        text = "\n".join(topics[k] for k in sorted(topics))
    except ImportError:  # some distributions strip pydoc_data
        import importlib
        import inspect

        names = ["argparse", "collections", "dataclasses", "functools", "inspect", "json", "logging",
                 "pathlib", "random", "re", "string", "textwrap", "typing", "unittest"]
        text = "\n".join(inspect.getdoc(importlib.import_module(m)) or "" for m in names)
    return text[:max_chars] if max_chars is not None else text


class CharTokenizer:
    """Character-level tokenizer over the sorted set of characters in ``text``."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        try:
            return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the tokenizer's vocabulary") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def lm_windows(ids: torch.Tensor, block_size: int, stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token stream (T,) → inputs (n, block_size) and next-token targets (n, block_size), windows every
    ``stride`` tokens (default: non-overlapping)."""
    stride = stride or block_size
    starts = torch.arange(0, len(ids) - block_size, stride)
    offsets = starts[:, None] + torch.arange(block_size)
    return ids[offsets], ids[offsets + 1]
