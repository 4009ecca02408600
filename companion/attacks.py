"""Attacks on a model's inputs. Clicks: white-box optimisation of continuous click coordinates (TETRIS).

:func:`optimise_clicks` moves one click per image along the gradient of a differentiable score (for a
segmenter: soft IoU of its prediction, computed through the Gaussian click map of
:func:`companion.data.clicks.click_maps`), by normalised steps decaying linearly from ``step_size`` pixels,
descending for the worst click and ascending for the best, and after every step projects the click back inside
its allowed region (:func:`project_inside`). Every iterate's hard score comes from the same forward pass, so the
search returns the most extreme iterate at a cost of ``steps`` forward+backward passes plus one forward for the
last position.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage


def project_inside(coords: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Coordinates (N, 2) as (x, y) → the same where their pixel lies in ``regions`` (N, H, W) bool, else the
    centre of the region's nearest pixel (Euclidean, pixel centres). Every region must be non-empty."""
    r = np.asarray(regions.cpu(), dtype=bool)
    n, h, w = r.shape
    col = coords[:, 0].detach().floor().long().clamp(0, w - 1)
    row = coords[:, 1].detach().floor().long().clamp(0, h - 1)
    inside_image = (coords[:, 0] >= 0) & (coords[:, 0] < w) & (coords[:, 1] >= 0) & (coords[:, 1] < h)
    out = coords.detach().clone()
    for i in range(n):
        if inside_image[i] and r[i, row[i], col[i]]:
            continue
        if not r[i].any():
            raise ValueError(f"region {i} is empty")
        _, (iy, ix) = ndimage.distance_transform_edt(~r[i], return_indices=True)
        out[i, 0], out[i, 1] = ix[row[i], col[i]] + 0.5, iy[row[i], col[i]] + 0.5
    return out


def optimise_clicks(score_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], start: torch.Tensor,
                    regions: torch.Tensor, steps: int, step_size: float = 1.0,
                    maximise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Search one click per image. ``score_fn(coords (N, 2))`` returns (differentiable score (N,), hard score
    (N,)); ``start`` (N, 2) is projected first. Normalised gradient steps of
    ``step_size · (steps - k) / steps`` px at step k (descent, or ascent when ``maximise``), each followed by
    :func:`project_inside`. Returns the most extreme iterate by hard score: (coords (N, 2), hard score (N,)),
    after ``steps`` forward+backward passes and one forward."""
    sign = 1.0 if maximise else -1.0
    coords = project_inside(start, regions)
    best_coords, best = coords.clone(), None
    for step in range(steps + 1):
        x = coords.clone().requires_grad_(step < steps)
        if step < steps:
            soft, hard = score_fn(x)
            (grad,) = torch.autograd.grad(soft.sum(), x)
        else:
            with torch.no_grad():
                _, hard = score_fn(x)
        hard = hard.detach()
        better = torch.ones_like(hard, dtype=torch.bool) if best is None else sign * (hard - best) > 0
        best = hard.clone() if best is None else torch.where(better, hard, best)
        best_coords[better] = coords[better]
        if step < steps:
            direction = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            coords = project_inside(coords + sign * step_size * (steps - step) / steps * direction, regions)
    return best_coords, best
