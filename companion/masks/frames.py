"""Span masks over frames at an exact rate, as in HuBERT and wav2vec 2.0 (and Ask2Mask's guided starts).

``frame_spans(n, frames, rate, span, weights)`` → keep (n, frames) bool, **True = keep** (the package
convention): exactly ``round(rate · frames)`` frames per row are masked, in spans of ``span`` frames whose starts
are drawn without replacement with probability ∝ ``weights`` (uniform when None). Spans may overlap; starts are
drawn until the union covers the target, and the last span is cut short so the count is exact.
"""

from __future__ import annotations

import torch


def frame_spans(n: int, frames: int, rate: float, span: int = 5, weights: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, frames) bool keep mask with exactly ``round(rate * frames)`` False per row, in spans of ``span``.

    weights: (n, frames) or (frames,) non-negative start weights (a row of zeros falls back to uniform).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    target = int(round(rate * frames))
    w = torch.ones(n, frames) if weights is None else torch.as_tensor(weights, dtype=torch.float32).expand(n, frames)
    if bool((w < 0).any()):
        raise ValueError("start weights must be non-negative")
    w = torch.where(w.sum(dim=1, keepdim=True) > 0, w, torch.ones_like(w))
    # weighted sampling without replacement: order the starts by Gumbel-perturbed log-weights (Efraimidis–Spirakis)
    u = torch.rand(n, frames, generator=generator).clamp(1e-12, 1.0)
    keys = torch.where(w > 0, torch.log(w) - torch.log(-torch.log(u)), torch.full_like(w, -float("inf")))
    order = keys.argsort(dim=1, descending=True)
    keep = torch.ones(n, frames, dtype=torch.bool)
    for i in range(n):
        masked = 0
        for start in order[i].tolist():
            if masked >= target:
                break
            run = keep[i, start:start + span]
            fresh = int(run.sum())
            if masked + fresh > target:  # cut the last span short: mask only its first fresh frames needed
                idx = run.nonzero().flatten()[:target - masked] + start
                keep[i, idx] = False
                masked = target
                break
            keep[i, start:start + span] = False
            masked += fresh
        if masked < target:  # every start tried (zero weights): mask the first still-kept frames
            idx = keep[i].nonzero().flatten()[:target - masked]
            keep[i, idx] = False
    return keep
