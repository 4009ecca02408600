"""Mask generators: pure functions of (shape, amount, generator) → bool masks.

Convention for this module: a pixel mask is bool (N,1,H,W) with **True = keep** (visible) and
False = removed; segment maps are int (H,W) with labels 0..S-1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def random_patches(n: int, size: int, patch: int, ratio: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Remove exactly ``round(ratio * L)`` of the L = (size/patch)² grid patches of each image, uniformly."""
    if size % patch:
        raise ValueError(f"size {size} is not a multiple of patch {patch}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    side = size // patch
    n_drop = round(ratio * side * side)
    order = torch.rand(n, side * side, generator=generator).argsort(dim=1)
    keep = torch.ones(n, side * side, dtype=torch.bool)
    keep.scatter_(1, order[:, :n_drop], False)
    keep = keep.view(n, 1, side, side)
    return keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def random_blocks(n: int, size: int, block: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Remove ``count`` square ``block``×``block`` blocks at uniform random positions (they may overlap)."""
    keep = torch.ones(n, 1, size, size, dtype=torch.bool)
    pos = torch.randint(0, size - block + 1, (n, count, 2), generator=generator)
    for i in range(n):
        for y, x in pos[i].tolist():
            keep[i, 0, y:y + block, x:x + block] = False
    return keep


def background_blocks(objects: torch.Tensor, block: int, count: int, margin: int = 1,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Remove ``count`` ``block``-sized squares lying on the background only (``margin`` px from the object).

    ``objects``: (N,1,H,W) bool, True on the object. Positions are drawn uniformly among those whose
    block stays clear of the object; an image with no such position is left unmasked.
    """
    n, _, h, w = objects.shape
    grown = F.max_pool2d(objects.float(), 2 * margin + 1, stride=1, padding=margin) if margin else objects.float()
    # a block at (y, x) is allowed iff no object pixel lies in it
    hits = F.avg_pool2d(grown, block, stride=1) > 0  # (N,1,H-b+1,W-b+1)
    keep = torch.ones_like(objects)
    for i in range(n):
        free = (~hits[i, 0]).nonzero()
        if len(free) == 0:
            continue
        pick = free[torch.randint(0, len(free), (count,), generator=generator)]
        for y, x in pick.tolist():
            keep[i, 0, y:y + block, x:x + block] = False
    return keep


def background_patches(objects: torch.Tensor, patch: int, share: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Remove ``round(share * L)`` of the L grid patches of each image, drawn among the patches that hold
    no object pixel (fewer if there are not enough of them).

    Patch-aligned, so the same mask means the same thing to a CNN (pixels) and a ViT (tokens).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    n, _, h, w = objects.shape
    free = F.max_pool2d(objects.float(), patch, patch).flatten(1) == 0  # (N, L) background-only patches
    score = torch.rand(free.shape, generator=generator).masked_fill(~free, 2.0)  # background patches first
    rank = score.argsort(dim=1).argsort(dim=1)
    n_drop = torch.minimum(free.sum(1, keepdim=True), torch.tensor(round(share * free.shape[1])))
    keep = (rank >= n_drop).view(n, 1, h // patch, w // patch)
    return keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def silhouette(objects: torch.Tensor) -> torch.Tensor:
    """Remove the object with its own silhouette: keep = not object."""
    return ~objects.bool()


def grid_segments(size: int, cell: int) -> torch.Tensor:
    """(size, size) int map of a regular grid of ``cell``-pixel squares, labelled row-major."""
    side = -(-size // cell)
    idx = torch.arange(size) // cell
    return idx[:, None] * side + idx[None, :]


def superpixels(image: torch.Tensor, n_segments: int = 40, compactness: float = 10.0) -> torch.Tensor:
    """SLIC superpixels (scikit-image) of one image (C,H,W) in [0,1] → (H,W) int64 labels 0..S-1."""
    from skimage.segmentation import slic

    arr = image.permute(1, 2, 0).numpy().astype(np.float64)
    grey = arr.shape[2] == 1
    labels = slic(arr[..., 0] if grey else arr, n_segments=n_segments, compactness=compactness, start_label=0,
                  channel_axis=None if grey else -1, enforce_connectivity=True)
    _, dense = np.unique(labels, return_inverse=True)
    return torch.from_numpy(dense.reshape(labels.shape).astype(np.int64))


def segments_to_mask(keep_segments: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """(B,S) segment keep-vector (bool or 0/1) and an (H,W) segment map → (B,1,H,W) bool pixel mask."""
    return keep_segments.bool()[:, segments][:, None]
