"""Pixel-sparse masks: a random subset of single pixels, at an exact rate.

MID ("Unsupervised real-world denoising: sparsity is all you need") sparsifies a noisy image by dropping a random
share of its pixels before the denoiser sees it. :func:`pixel_sparse` draws such masks with *exactly*
``round(ratio · H · W)`` dropped pixels per image (a random permutation per image, not independent coin flips),
the same pixels in every channel.

Convention of :mod:`companion.masks`: bool (N, 1, H, W), **True = keep** (the pixel the network sees).
"""

from __future__ import annotations

import torch


def num_dropped(size: tuple[int, int] | int, ratio: float) -> int:
    """Pixels a mask of ``ratio`` drops from an image of ``size`` (H, W) or size×size."""
    h, w = (size, size) if isinstance(size, int) else size
    return round(ratio * h * w)


def pixel_sparse(n: int, size: tuple[int, int] | int, ratio: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` keep masks (n, 1, H, W), bool, each dropping exactly ``num_dropped(size, ratio)`` random pixels.

    ``ratio`` in [0, 1] is the share of pixels dropped (MID's masking ratio α). The same ``generator`` state
    gives the same masks.
    """
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    h, w = (size, size) if isinstance(size, int) else size
    drop = num_dropped((h, w), ratio)
    order = torch.rand(n, h * w, generator=generator).argsort(dim=1)
    keep = torch.ones(n, h * w, dtype=torch.bool)
    keep.scatter_(1, order[:, :drop], False)
    return keep.view(n, 1, h, w)


__all__ = ["num_dropped", "pixel_sparse"]
