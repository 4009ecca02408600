"""Scores shared by the notebooks: multi-label mAP, bit accuracy, mask IoU, and the interactive-segmentation
scores IoU@k and NoC@τ (number of clicks to reach an IoU of τ)."""

from __future__ import annotations

import numpy as np
import torch


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Macro mean of per-class average precision (``sklearn.metrics.average_precision_score``) of scores
    [N, C] against multi-hot labels [N, C]; classes without a positive in ``labels`` are left out."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(torch.as_tensor(labels).cpu(), dtype=int)
    s = np.asarray(torch.as_tensor(scores).detach().float().cpu())
    present = y.sum(0) > 0
    if not present.any():
        raise ValueError("labels have no positive in any class")
    return float(average_precision_score(y[:, present], s[:, present], average="macro"))


def bit_accuracy(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-message fraction of bits recovered: decoded logits [N, B] (bit = logit > 0) vs bits [N, B] in {0, 1}
    → [N]."""
    return ((logits > 0) == bits.bool()).float().mean(1)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of bool masks [N, ...] → [N]; two empty masks score 1."""
    pred, target = pred.flatten(1).bool(), target.flatten(1).bool()
    inter = (pred & target).sum(1).float()
    union = (pred | target).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def iou_at_k(ious: torch.Tensor, k: int) -> torch.Tensor:
    """IoU after the k-th click (1-based) from per-click IoUs [N, K] → [N]."""
    if not 1 <= k <= ious.shape[1]:
        raise ValueError(f"k must be in 1..{ious.shape[1]}, got {k}")
    return ious[:, k - 1]


def noc(ious: torch.Tensor, threshold: float) -> torch.Tensor:
    """Number of clicks to reach ``threshold`` IoU from per-click IoUs [N, K] → [N] float. An object that never
    reaches it counts K clicks (the RITM / SimpleClick convention, with K the click budget, usually 20)."""
    reached = ious >= threshold
    first = reached.float().argmax(1) + 1
    return torch.where(reached.any(1), first, torch.full_like(first, ious.shape[1])).float()


__all__ = ["bit_accuracy", "iou_at_k", "mask_iou", "mean_average_precision", "noc"]
