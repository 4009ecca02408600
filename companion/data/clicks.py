"""Clicks for interactive segmentation: Gaussian click maps and click simulators.

Coordinates are continuous (x, y) in pixels with pixel (row i, column j) covering [j, j+1) × [i, i+1), so its
centre is (j + 0.5, i + 0.5) — the convention of :func:`companion.data.images.make_shapes`.

- :func:`click_maps`: positive and negative clicks → two maps (N, 2, H, W), each 1 - ∏(1 - g_k) over its clicks
  with g_k = exp(-|p - c_k|² / 2σ²) at pixel centres p: smooth (differentiable) in the click coordinates.
- Simulators take ground-truth masks and the current predictions (N, H, W) bool and click on the **largest error
  region** (the largest 4-connected component of false negatives or false positives; a click on a false
  negative is positive, on a false positive negative; before any prediction that region is the object):
  - :func:`standard_clicks`: the protocol of RITM / SimpleClick — the pixel of the region farthest from its
    boundary (Euclidean distance transform, image border counted as boundary; the first such pixel in
    row-major order on ties), at its centre;
  - :func:`user_clicks`: a stated synthetic user — with probability ``edge_bias`` a pixel drawn uniformly from
    the region's rim (distance to its boundary ≤ ``edge_width`` px), otherwise uniformly from the whole region,
    then a uniform position inside that pixel;
  - :func:`random_clicks`: uniform over the region (a uniform pixel, a uniform position inside it).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def click_maps(coords: torch.Tensor, positive: torch.Tensor, size: int, sigma: float,
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """Clicks (N, K, 2) as (x, y), ``positive`` (N, K) bool, optional ``valid`` (N, K) bool → maps (N, 2, H=size,
    W=size): channel 0 positive, channel 1 negative clicks, in [0, 1], differentiable in ``coords``."""
    centres = torch.arange(size, dtype=coords.dtype, device=coords.device) + 0.5
    dx = centres[None, None, None, :] - coords[..., 0, None, None]  # (N, K, 1, W)
    dy = centres[None, None, :, None] - coords[..., 1, None, None]  # (N, K, H, 1)
    g = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))  # (N, K, H, W)
    if valid is not None:
        g = g * valid[..., None, None].to(g)
    pos = positive[..., None, None].to(g)
    none = lambda w: 1 - torch.prod(1 - g * w, dim=1)  # noqa: E731 — probabilistic OR over the clicks
    return torch.stack([none(pos), none(1 - pos)], dim=1)


def largest_error_regions(masks: torch.Tensor, preds: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The largest 4-connected error component per image: (regions (N, H, W) bool, positive (N,) bool — True
    when it is a false-negative region). Images without error get an empty region (positive True)."""
    gt, pr = np.asarray(masks.cpu(), dtype=bool), np.asarray(preds.cpu(), dtype=bool)
    regions, positive = np.zeros_like(gt), np.ones(len(gt), dtype=bool)
    for n in range(len(gt)):
        best = 0
        for is_pos, err in ((True, gt[n] & ~pr[n]), (False, ~gt[n] & pr[n])):
            labels, count = ndimage.label(err)
            if count:
                sizes = np.bincount(labels.ravel())[1:]
                k = int(sizes.argmax())
                if sizes[k] > best:
                    best, regions[n], positive[n] = sizes[k], labels == k + 1, is_pos
    return regions, positive


def boundary_distance(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel of ``region`` (H, W) bool to the nearest pixel outside it (the image
    border counts as outside); 0 outside the region."""
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def _centres(flat_idx: np.ndarray, width: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([flat_idx % width, flat_idx // width], -1).astype(np.float32) + 0.5)


def standard_clicks(masks: torch.Tensor, preds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The standard protocol's next click: (coords (N, 2), positive (N,) bool) — see the module doc."""
    regions, positive = largest_error_regions(masks, preds)
    idx = np.array([boundary_distance(r).argmax() for r in regions])
    return _centres(idx, regions.shape[-1]), torch.from_numpy(positive)


def _sample(regions: np.ndarray, weights_fn, n: int, generator: torch.Generator) -> torch.Tensor:
    """n clicks per image (N, n, 2): pixels drawn with ``weights_fn(region)`` (H·W,), a uniform point inside each."""
    out = []
    for r in regions:
        w = torch.from_numpy(weights_fn(r).ravel().astype(np.float64))
        if w.sum() <= 0:  # no error left: click anywhere (the prediction is already perfect)
            w = torch.ones_like(w)
        idx = torch.multinomial(w / w.sum(), n, replacement=True, generator=generator).numpy()
        out.append(_centres(idx, r.shape[-1]) - 0.5 + torch.rand(n, 2, generator=generator))
    return torch.stack(out)


def user_clicks(masks: torch.Tensor, preds: torch.Tensor, generator: torch.Generator, n: int = 1,
                edge_bias: float = 0.5, edge_width: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic user clicks (coords (N, n, 2), positive (N,)): a mixture, ``edge_bias`` on the region's rim
    (boundary distance ≤ ``edge_width``), the rest uniform over the region (see the module doc)."""
    regions, positive = largest_error_regions(masks, preds)

    def weights(r):
        rim = r & (boundary_distance(r) <= edge_width)
        uniform = r / max(r.sum(), 1)
        return (1 - edge_bias) * uniform + edge_bias * (rim / rim.sum() if rim.any() else uniform)

    return _sample(regions, weights, n, generator), torch.from_numpy(positive)


def random_clicks(masks: torch.Tensor, preds: torch.Tensor, generator: torch.Generator,
                  n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Clicks uniform over the largest error region (coords (N, n, 2), positive (N,))."""
    regions, positive = largest_error_regions(masks, preds)
    return _sample(regions, lambda r: r.astype(np.float64), n, generator), torch.from_numpy(positive)
