"""Segmentation heads shared by the open-vocabulary papers. For now: mask pooling.

:func:`mask_pool` — the average of dense features (N, C, h, w) inside each of K masks given at image resolution
(N, K, H, W): masks are area-resized to the feature grid, so a feature cell counts by the share of it the mask
covers (FC-CLIP's and Mask-Adapter's baseline classifier of mask proposals).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_pool(features: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N, C, h, w) features, (N, K, H, W) masks (bool or soft, H and W multiples of h and w) → (N, K, C)."""
    n, c, h, w = features.shape
    weights = F.adaptive_avg_pool2d(masks.float(), (h, w)) if masks.shape[-2:] != (h, w) else masks.float()
    total = weights.flatten(2).sum(-1, keepdim=True)  # (N, K, 1)
    pooled = torch.einsum("nkhw,nchw->nkc", weights, features)
    return pooled / total.clamp_min(eps)
