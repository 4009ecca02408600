"""Missingness bias: how much removing *irrelevant* pixels, or the object itself, moves a model.

Convention: masks are bool (N,1,H,W), True = keep. Every function compares strategies on the same
images and the same masks (paired), and returns per-image values beside the means so claims can be
judged with paired statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..train import predict
from . import apply


def masked_probs(model, images, mask, strategy: str, batch_size: int = 256, device="cpu") -> torch.Tensor:
    """Softmax outputs (N,K) under ``strategy``; ``mask=None`` gives the unmasked prediction."""
    if mask is None:
        return predict(lambda x: model(x).softmax(-1), images, batch_size=batch_size, device=device)
    return predict(lambda x, m: apply(model, x, m, strategy).softmax(-1), images, mask, batch_size=batch_size,
                   device=device)


def missingness_bias(model, images, mask, strategies, batch_size: int = 256, device="cpu") -> dict:
    """Flip rate and KL(unmasked ‖ masked) when removing the pixels where ``mask`` is False.

    Meant for masks over the background only, which an unbiased masking should not notice.
    Returns ``{strategy: {"flip_rate", "kl", "flips" (N,), "kls" (N,)}}``.
    """
    clean = masked_probs(model, images, None, "", batch_size, device)
    out = {}
    for s in strategies:
        p = masked_probs(model, images, mask, s, batch_size, device)
        flips = (p.argmax(-1) != clean.argmax(-1)).float()
        kls = kl_divergence(clean, p)
        out[s] = {"flip_rate": flips.mean().item(), "kl": kls.mean().item(), "flips": flips, "kls": kls}
    return out


def shape_leak(model, images, labels, objects, strategies, batch_size: int = 256, device="cpu") -> dict:
    """Accuracy of predicting an object's class after removing it with its own silhouette.

    With nothing of the object left, an unbiased masking should be at chance: anything above chance
    is information leaked by the mask's shape (or by the fill colour against the background).
    Returns ``{strategy: {"accuracy", "correct" (N,), "predicted" (N,)}}``.
    """
    keep = ~objects.bool()
    out = {}
    for s in strategies:
        pred = masked_probs(model, images, keep, s, batch_size, device).argmax(-1)
        correct = (pred == labels).float()
        out[s] = {"accuracy": correct.mean().item(), "correct": correct, "predicted": pred}
    return out


def chance_level(labels: torch.Tensor, num_classes: int) -> float:
    """Accuracy of always predicting the most frequent class."""
    return torch.bincount(labels, minlength=num_classes).max().item() / len(labels)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p ‖ q) of probability rows."""
    return F.kl_div(q.clamp_min(1e-12).log(), p, reduction="none").sum(-1)
