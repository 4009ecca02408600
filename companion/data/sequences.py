"""Synthetic sequence tasks with exact answers, and a character corpus from text that ships with Python.

Targets use -100 (the ``F.cross_entropy`` ignore index) wherever there is nothing to predict.
Everything is vectorised and deterministic in the ``generator``'s seed.
"""

from __future__ import annotations

from dataclasses import dataclass

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


DIGIT_TASKS = ("copy", "reverse", "sort", "increment")


def digit_tasks(n: int, length: int = 6, tasks: tuple[str, ...] = DIGIT_TASKS,
                generator: torch.Generator | None = None,
                digits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A multitask seq2seq set on digit strings: ``length`` digits, then a task token; the answer is ``length``
    digits (so answer position i lines up with source position i). Tasks: ``copy``; ``reverse``; ``sort``
    (ascending); ``increment`` (the digits read as a number, most significant first, plus one, modulo
    10**length).

    Vocabulary: digits 0-9 are tokens 0-9, the task tokens follow (``10 + DIGIT_TASKS.index(task)``), and the
    decoder's begin-of-sequence token is ``10 + len(DIGIT_TASKS)``; the vocabulary size is ``11 + len(DIGIT_TASKS)``.
    Tasks are drawn uniformly from ``tasks``. ``digits`` (n, length) long, optional: use these digit strings
    instead of drawing them (e.g. the same strings under two tasks, for paired comparisons). Returns source
    (n, length+1), target (n, length) and the index of each item's task in ``DIGIT_TASKS`` (n,), all long.
    """
    unknown = [t for t in tasks if t not in DIGIT_TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {DIGIT_TASKS}, got {tasks!r}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if digits is not None and (digits.shape != (n, length) or digits.min() < 0 or digits.max() > 9):
        raise ValueError(f"digits must be ({n}, {length}) with values in 0..9, got shape {tuple(digits.shape)}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    allowed = torch.tensor([DIGIT_TASKS.index(t) for t in tasks])
    task = allowed[torch.randint(0, len(allowed), (n,), generator=g)]
    digits = torch.randint(0, 10, (n, length), generator=g) if digits is None else digits.long()

    # increment: add one at the last digit and carry through the trailing nines
    trailing_nines = (digits.flip(1) == 9).long().cumprod(1).flip(1).bool()  # (n, L) True inside the run of 9s
    last_not_nine = torch.zeros_like(trailing_nines)
    first_carry = trailing_nines.long().argmax(1)  # the run's first position (0 if there is no run)
    has_run = trailing_nines.any(1)
    position = torch.where(has_run, first_carry - 1, torch.full_like(first_carry, length - 1))
    valid = position >= 0
    last_not_nine[torch.arange(n)[valid], position[valid]] = True
    incremented = torch.where(trailing_nines, torch.zeros_like(digits), digits + last_not_nine.long())

    answers = torch.stack([digits, digits.flip(1), digits.sort(1).values, incremented])  # (4, n, L)
    target = answers[task, torch.arange(n)]
    source = torch.cat([digits, (10 + task)[:, None]], dim=1)
    return source, target, task


# ---------------------------------------------------------------------------------------------------------------
# Key-information retrieval with a controllable gold position: multi-document QA ("lost in the middle") and a
# needle in a haystack. Both return a ``Retrieval``.


@dataclass
class Retrieval:
    """A batch of retrieval prompts with their answers.

    tokens (n, T) long and targets (n, T) long (-100 except at the positions whose next token is an answer
    token); ``gold`` (n,) the gold document's index (multi-document) or the needle's first token position
    (needle); ``gold_mask`` (n, T) bool, True on the gold document's / needle's tokens; ``context_len``: the
    prompt's context (documents or haystack) occupies ``tokens[:, :context_len]``, then ``QUERY key`` and the
    answer; ``vocab_size``: ids used (keys, values, filler, the query marker ``vocab_size - 1``).
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    gold: torch.Tensor
    gold_mask: torch.Tensor
    context_len: int
    vocab_size: int

    @property
    def answer_positions(self) -> torch.Tensor:
        """(A,) the positions holding a target (the query key and every answer token but the last)."""
        return (self.targets[0] != IGNORE).nonzero().flatten()


def _retrieval_vocab(num_keys: int, num_values: int, num_filler: int) -> tuple[int, int, int]:
    if num_keys < 1 or num_values < 1 or num_filler < 0:
        raise ValueError(f"need num_keys >= 1, num_values >= 1, num_filler >= 0; got {num_keys}, {num_values}, "
                         f"{num_filler}")
    return num_keys, num_keys + num_values, num_keys + num_values + num_filler  # value start, filler start, QUERY


def _with_question(context: torch.Tensor, gold_key: torch.Tensor, gold_value: torch.Tensor, query: int):
    """Append one ``QUERY key value...`` question per key to the context: keys (n,) or (n, Q), values (n, m) or
    (n, Q, m); targets: the answer tokens (next-token convention)."""
    n, ctx = context.shape
    keys = gold_key.reshape(n, -1)  # (n, Q)
    values = gold_value.reshape(n, keys.shape[1], -1)  # (n, Q, m)
    m, step = values.shape[-1], 2 + values.shape[-1]
    questions = torch.cat([torch.full_like(keys, query)[..., None], keys[..., None], values], dim=-1)
    tokens = torch.cat([context, questions.flatten(1)], dim=1)
    targets = torch.full_like(tokens, IGNORE)
    for j in range(keys.shape[1]):  # the query key predicts v1, v1 predicts v2, ...
        targets[:, ctx + j * step + 1:ctx + j * step + 1 + m] = values[:, j]
    return tokens, targets


def _positions(position, n: int, high: int, g: torch.Generator, name: str) -> torch.Tensor:
    """None → uniform in [0, high); an int or an (n,) tensor → that position (checked)."""
    if position is None:
        return torch.randint(0, high, (n,), generator=g)
    pos = torch.as_tensor(position, dtype=torch.long).expand(n).clone()
    if (pos < 0).any() or (pos >= high).any():
        raise ValueError(f"{name} must be in [0, {high - 1}], got {position}")
    return pos


def multi_doc_retrieval(n: int, num_docs: int = 8, value_len: int = 1, filler_len: int = 0, num_keys: int = 32,
                        num_values: int = 32, num_filler: int = 16, gold_position=None,
                        generator: torch.Generator | None = None, num_questions: int = 1) -> Retrieval:
    """Multi-document question answering with one gold document among distractors ("lost in the middle").

    The context is ``num_docs`` documents of ``1 + value_len + filler_len`` tokens: a key (distinct within a
    sequence, from ``[0, num_keys)``), its value (``value_len`` tokens from the value range) and filler. Then
    ``QUERY`` and the gold document's key; the answer is that document's value. ``gold_position`` (document
    index in ``[0, num_docs)``: an int, an (n,) tensor, or None for uniform) places the gold document.
    ``num_questions > 1`` appends further ``QUERY key value...`` questions about other documents (distinct, in
    random order; each ``2 + value_len`` tokens, all answers in the targets); ``gold`` and ``gold_mask`` refer
    to the first. Chance exact-match accuracy is ``num_values ** -value_len``.
    """
    v0, f0, query = _retrieval_vocab(num_keys, num_values, num_filler)
    if not 1 <= num_docs <= num_keys:
        raise ValueError(f"num_docs must be in [1, num_keys={num_keys}], got {num_docs}")
    if not 1 <= num_questions <= num_docs:
        raise ValueError(f"num_questions must be in [1, num_docs={num_docs}], got {num_questions}")
    if value_len < 1 or filler_len < 0 or (filler_len and not num_filler):
        raise ValueError(f"need value_len >= 1 and filler_len >= 0 (filler needs num_filler >= 1), got "
                         f"value_len={value_len}, filler_len={filler_len}, num_filler={num_filler}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    gold = _positions(gold_position, n, num_docs, g, "gold_position")
    keys = torch.rand(n, num_keys, generator=g).argsort(-1)[:, :num_docs]  # (n, D) distinct keys
    values = torch.randint(v0, f0, (n, num_docs, value_len), generator=g)  # (n, D, m)
    filler = torch.randint(f0, query, (n, num_docs, filler_len), generator=g) if filler_len else \
        torch.empty(n, num_docs, 0, dtype=torch.long)
    docs = torch.cat([keys[..., None], values, filler], dim=-1)  # (n, D, doc_len)
    doc_len = docs.shape[-1]
    asked = gold[:, None]  # (n, Q) the documents asked about, the gold one first
    if num_questions > 1:
        others = torch.rand(n, num_docs, generator=g).scatter(1, asked, 2.0).argsort(-1)[:, :num_questions - 1]
        asked = torch.cat([asked, others], dim=1)
    rows = torch.arange(n)[:, None]
    tokens, targets = _with_question(docs.flatten(1), keys[rows, asked], values[rows, asked], query)
    gold_mask = torch.zeros_like(tokens, dtype=torch.bool)
    in_gold = (torch.arange(num_docs * doc_len)[None] // doc_len) == gold[:, None]
    gold_mask[:, :num_docs * doc_len] = in_gold
    return Retrieval(tokens, targets, gold, gold_mask, num_docs * doc_len, query + 1)


def needle_haystack(n: int, context_len: int = 32, value_len: int = 1, num_keys: int = 32, num_values: int = 32,
                    num_filler: int = 16, depth=None, generator: torch.Generator | None = None) -> Retrieval:
    """Needle in a haystack: ``context_len`` filler tokens with one needle ``key value...`` whose first token
    sits at ``depth`` (a token position in ``[0, context_len - value_len - 1]``: an int, an (n,) tensor, or None
    for uniform); then ``QUERY key``, and the answer is the needle's value."""
    v0, f0, query = _retrieval_vocab(num_keys, num_values, num_filler)
    needle_len = 1 + value_len
    if value_len < 1 or num_filler < 1 or context_len < needle_len:
        raise ValueError(f"need value_len >= 1, num_filler >= 1 and context_len >= {needle_len}, got "
                         f"{value_len}, {num_filler}, {context_len}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    start = _positions(depth, n, context_len - needle_len + 1, g, "depth")
    key = torch.randint(0, num_keys, (n,), generator=g)
    value = torch.randint(v0, f0, (n, value_len), generator=g)
    context = torch.randint(f0, query, (n, context_len), generator=g)
    offsets = start[:, None] + torch.arange(needle_len)  # (n, 1+m)
    context.scatter_(1, offsets, torch.cat([key[:, None], value], dim=1))
    tokens, targets = _with_question(context, key, value, query)
    gold_mask = torch.zeros_like(tokens, dtype=torch.bool).scatter_(1, offsets, True)
    return Retrieval(tokens, targets, start, gold_mask, context_len, query + 1)
