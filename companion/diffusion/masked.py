"""Absorbing-state (``[MASK]``) diffusion over token sequences, after MDiff4STR's official code (OpenOCR,
``openrec/preprocess/mdiff_label_encode.py`` and ``openrec/modeling/decoders/mdiff_decoder.py``).

Nothing here knows what the tokens mean: sequences are (N, L) long tensors of token ids, each holding
``lengths[i]`` real tokens (the end-of-sequence token included) followed by padding, and a denoiser is any
callable ``model(tokens) -> logits`` with tokens (N, L) and logits (N, L, V) (condition it on an image, a
feature sequence or nothing with a closure).

Training:

- :func:`noise` draws one of six noisings per sequence (:data:`NOISINGS`): ``full`` (every token masked: parallel
  decoding), ``suffix`` (all tokens from a random split on: left-to-right decoding), ``prefix`` (all tokens
  before a random split: right-to-left), ``block`` (the sequence cut into 2–6 blocks, everything after the
  first k blocks masked: semi-autoregressive), ``cloze`` (exactly one token) and ``random`` (each token with
  probability p ~ U(0, 1): vanilla masked diffusion, MDM). Padding is fed as ``[MASK]`` and never in the loss.
- :func:`masked_loss`: cross-entropy on masked positions, each weighted 1/p (p = masked share of the
  sequence) and divided by the sequence's length, summed and averaged over sequences.
- :func:`replace_tokens` / :func:`replacement_loss`: token replacement: each real token swapped for a random
  id with probability t ~ U(eps, 1) (one t per sequence), cross-entropy on every real position, which trains
  the model to revise wrong tokens it did not see masked.

Decoding (:func:`decode`): ``parallel`` (one pass from all-mask), ``low_confidence`` (each step commits the
still-masked tokens whose confidence is above the mean confidence of the still-masked tokens; positions after
the first predicted end-of-sequence token stay masked and out of the mean; the last step commits the rest),
``semi_ar`` (the same inside a growing left window of ``L / steps`` positions per step), and an optional
revision pass (:func:`revise`) that re-predicts every token of the finished sequence once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

NOISINGS = ("full", "suffix", "prefix", "block", "cloze", "random")
DECODERS = ("parallel", "low_confidence", "semi_ar")


def _positions(n: int, length: int, device) -> torch.Tensor:
    return torch.arange(length, device=device).expand(n, length)


def _randint(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per-item uniform integers in [low, high] (inclusive), long tensors of the same shape."""
    u = torch.rand(low.shape, generator=generator).to(low.device)
    return low + (u * (high - low + 1).float()).long().clamp(max=(high - low).clamp(min=0))


def noising_masks(kinds: torch.Tensor, lengths: torch.Tensor, seq_len: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Masked positions of each sequence under its noising: kinds (N,) indices into :data:`NOISINGS`,
    lengths (N,) real tokens per sequence (≥ 1) → masked (N, seq_len) bool, never beyond the length and never
    empty. As in the official code, sequences of ≤ 2 tokens take the ``random`` noising for ``suffix``,
    ``prefix``, ``block`` and ``cloze``."""
    n, dev = len(kinds), lengths.device
    pos = _positions(n, seq_len, dev)
    inside = pos < lengths[:, None]
    short = lengths <= 2
    kinds = torch.where(short & (kinds != NOISINGS.index("full")), NOISINGS.index("random"), kinds)
    one = torch.ones_like(lengths)
    split = _randint(one, (lengths - 1).clamp(min=1), generator)  # in [1, len-1]
    # block: n_blocks in [2, 6] (at most the length), block size len // n_blocks, keep the first k ≥ 1 blocks
    n_blocks = torch.minimum(_randint(2 * one, 6 * one, generator), lengths.clamp(min=2))
    size = (lengths // n_blocks).clamp(min=1)
    kept = _randint(one, n_blocks - 1, generator) * size  # tokens kept: k blocks, k in [1, n_blocks-1]
    kept = torch.minimum(kept, lengths - 1)
    cloze = _randint(0 * one, lengths - 1, generator)
    p = torch.rand(n, generator=generator).to(dev)
    rand = (torch.rand(n, seq_len, generator=generator).to(dev) < p[:, None]) & inside
    empty = ~rand.any(1)  # the official code then masks one random real position
    rand = rand | (empty[:, None] & (pos == cloze[:, None]))
    by_kind = torch.stack([
        inside,  # full
        inside & (pos >= split[:, None]),  # suffix
        pos < split[:, None],  # prefix
        inside & (pos >= kept[:, None]),  # block
        pos == cloze[:, None],  # cloze
        rand,  # random
    ])  # (6, N, L)
    return by_kind[kinds, torch.arange(n, device=dev)]


def noise(tokens: torch.Tensor, lengths: torch.Tensor, mask_id: int, kinds=NOISINGS,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one noising per sequence among ``kinds`` (names from :data:`NOISINGS`, uniformly) and apply it.

    tokens (N,L), lengths (N,) → noisy tokens (N,L) (masked positions and padding set to ``mask_id``),
    masked (N,L) bool (the loss positions) and p (N,) float, the masked share of each sequence."""
    idx = torch.tensor([NOISINGS.index(k) for k in kinds], device=tokens.device)
    pick = torch.randint(0, len(idx), (len(tokens),), generator=generator).to(tokens.device)
    masked = noising_masks(idx[pick], lengths, tokens.shape[1], generator)
    pad = _positions(*tokens.shape, tokens.device) >= lengths[:, None]
    noisy = torch.where(masked | pad, torch.full_like(tokens, mask_id), tokens)
    p = masked.sum(1).float() / lengths.float()
    return noisy, masked, p


def masked_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, p: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
    """logits (N,L,V), targets (N,L), masked (N,L) bool, p (N,), lengths (N,) → scalar:
    Σ_masked CE / (p · length), averaged over the N sequences (the official code's MDM loss)."""
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    weight = masked.float() / (p[:, None] * lengths[:, None].float())
    return (ce * weight).sum() / len(targets)


def replace_tokens(tokens: torch.Tensor, lengths: torch.Tensor, n_random: int, mask_id: int, eps: float = 1e-3,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Token replacement: each real token swapped for a uniform id in [0, n_random) with probability
    t ~ U(eps, 1), one t per sequence (a swap may draw the same id); padding set to ``mask_id``.
    tokens (N,L), lengths (N,) → (N,L)."""
    n, length = tokens.shape
    t = eps + (1 - eps) * torch.rand(n, generator=generator)
    swap = torch.rand(n, length, generator=generator) < t[:, None]
    rand = torch.randint(0, n_random, (n, length), generator=generator)
    out = torch.where(swap.to(tokens.device), rand.to(tokens.device), tokens)
    pad = _positions(n, length, tokens.device) >= lengths[:, None]
    return out.masked_fill(pad, mask_id)


def replacement_loss(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every real position (N,L,V), (N,L), (N,) → scalar."""
    inside = _positions(*targets.shape, targets.device) < lengths[:, None]
    return F.cross_entropy(logits[inside], targets[inside])


def after_eos(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(N,L) → (N,L) bool: positions after the first ``eos_id`` of each row (none where a row has no EOS)."""
    is_eos = tokens == eos_id
    return (is_eos.cumsum(1) - is_eos.long()) > 0


@dataclass
class Decoded:
    """A decoding's result: ``tokens`` (N,L) (positions after the first EOS may hold ``mask_id``), ``passes``
    (model calls on the batch), ``row_passes`` (N,) (the pass after which each row had nothing left to commit:
    what the row alone needs) and, when traced, ``trace``: the token state (N,L) after each pass."""

    tokens: torch.Tensor
    passes: int
    row_passes: torch.Tensor
    trace: list[torch.Tensor] = field(default_factory=list)


@torch.no_grad()
def decode(model: Callable[[torch.Tensor], torch.Tensor], n: int, seq_len: int, mask_id: int, eos_id: int,
           steps: int = 3, method: str = "low_confidence", trace: bool = False, device=None) -> Decoded:
    """Decode ``n`` sequences of ``seq_len`` tokens from all-``[MASK]`` in at most ``steps`` passes.

    ``parallel``: one pass, every position its argmax. ``low_confidence``: at each pass, the still-masked
    positions before the first predicted EOS are *candidates*; those whose max probability is above the
    candidates' mean are committed (the most confident one always, so every pass commits ≥ 1 token while
    candidates remain); the last pass commits every candidate. Positions after the first predicted EOS stay
    masked. Decoding stops early once no row has a candidate left (``row_passes`` records when each row did).
    ``semi_ar``: low-confidence inside a left window of ``ceil(seq_len / steps) · (step + 1)`` positions.
    Committed tokens are never changed (see :func:`revise`)."""
    if method not in DECODERS:
        raise ValueError(f"method must be one of {DECODERS}, got {method!r}")
    x = torch.full((n, seq_len), mask_id, dtype=torch.long, device=device)
    steps = 1 if method == "parallel" else steps
    block = -(-seq_len // steps)
    states, passes = [], 0
    window = _positions(1, seq_len, device)[0] < block * torch.arange(1, steps + 1, device=device)[:, None]
    row_passes = torch.zeros(n, dtype=torch.long, device=device)
    for step in range(steps):
        conf, pred = model(x).float().softmax(-1).max(-1)  # (N,L) each
        passes += 1
        if method == "parallel":
            x, states = pred, [pred.clone()]
            row_passes.fill_(1)
            break
        last = step == steps - 1
        masked_now = x == mask_id
        open_ = masked_now & ~after_eos(torch.where(masked_now, pred, x), eos_id)  # (N,L) before the first EOS
        if last:
            commit = open_
        else:
            cand = open_ & window[step] if method == "semi_ar" else open_
            c = conf.masked_fill(~cand, 0.0)
            mean = c.sum(1, keepdim=True) / cand.sum(1, keepdim=True).clamp(min=1)
            commit = cand & ((c > mean) | (c == c.amax(1, keepdim=True)))
        x = torch.where(commit, pred, x)
        if trace:
            states.append(x.clone())
        # committing pred leaves the draft (and so its first EOS) unchanged: what is left is open minus committed
        remaining = (open_ & ~commit).any(1)
        row_passes = torch.where((row_passes == 0) & (~remaining | last), passes, row_passes)
        if not remaining.any():
            break
    return Decoded(x, passes, row_passes, states if trace else [])


@torch.no_grad()
def revise(model: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, mask_id: int,
           eos_id: int) -> torch.Tensor:
    """The revision pass: positions after the first EOS set to ``mask_id``, one more model call, every
    position before and at the first EOS replaced by its argmax (N,L) → (N,L)."""
    x = tokens.masked_fill(after_eos(tokens, eos_id), mask_id)
    pred = model(x).argmax(-1)
    return torch.where(after_eos(tokens, eos_id), x, pred)


__all__ = ["DECODERS", "NOISINGS", "Decoded", "after_eos", "decode", "masked_loss", "noise", "noising_masks",
           "replace_tokens", "replacement_loss", "revise"]
