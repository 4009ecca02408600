"""Free-form masks: random brush strokes, as in the free-form inpainting papers (DeepFill v2's stroke masks).

A stroke starts at a random pixel and walks through a few vertices (random turn, random segment length); every
segment is painted with a round brush of random width. Strokes are added until the painted area reaches the
requested share; the last segment is painted only up to that share (its new pixels in order of distance from the
segment's start), so every mask paints exactly ``round(area * H * W)`` pixels.

Convention of :mod:`companion.masks`: bool (N, 1, H, W), **True = the painted region** (the region kept / marked).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _segment_distance(ys: np.ndarray, xs: np.ndarray, a: tuple[float, float], b: tuple[float, float]):
    """Distance of every pixel centre (ys, xs) to the segment a→b, and its position t in [0, 1] along it."""
    (ay, ax), (by, bx) = a, b
    dy, dx = by - ay, bx - ax
    length2 = dy * dy + dx * dx
    t = ((ys - ay) * dy + (xs - ax) * dx) / length2 if length2 > 0 else np.zeros_like(ys)
    t = t.clip(0, 1)
    return np.hypot(ys - (ay + t * dy), xs - (ax + t * dx)), t


def free_form(n: int, size: int, area: float | torch.Tensor, generator: torch.Generator | None = None,
              max_vertices: int = 6, max_width: float | None = None, max_length: float | None = None) -> torch.Tensor:
    """``n`` free-form brush-stroke masks (N, 1, size, size), bool, each painting exactly ``round(area·size²)`` pixels.

    ``area`` is one share for every mask or a tensor (n,) of per-mask shares.
    ``max_width`` (brush diameter, default size/6) and ``max_length`` (segment length, default size/3) are in
    pixels; widths are drawn in [max_width/3, max_width], lengths in [max_length/4, max_length]. The same
    ``generator`` state gives the same masks (one draw from it seeds a NumPy generator for the strokes).
    """
    areas = torch.as_tensor(area, dtype=torch.float64).expand(n)
    if not bool(((areas >= 0) & (areas <= 1)).all()):
        raise ValueError(f"area must be in [0, 1], got {area}")
    max_width = max(2.0, size / 6) if max_width is None else max_width
    max_length = max(2.0, size / 3) if max_length is None else max_length
    rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    out = np.zeros((n, 1, size, size), dtype=bool)
    for i in range(n):
        mask = out[i, 0]
        target = round(areas[i].item() * size * size)
        painted = 0
        while painted < target:
            y, x = rng.random(2) * (size - 1)
            angle = rng.random() * 2 * math.pi
            width = max_width * (1 + 2 * rng.random()) / 3
            for _ in range(1 + int(rng.random() * max_vertices)):
                angle += (rng.random() - 0.5) * math.pi  # turn by up to ±90°
                length = max_length * (1 + 3 * rng.random()) / 4
                ny = min(max(y + length * math.sin(angle), 0.0), size - 1.0)
                nx = min(max(x + length * math.cos(angle), 0.0), size - 1.0)
                dist, t = _segment_distance(ys, xs, (y, x), (ny, nx))
                new = (dist <= width / 2) & ~mask
                count = int(new.sum())
                if count > target - painted:  # paint the last segment only up to the target, from its start
                    idx = np.flatnonzero(new)[np.argsort(t.ravel()[new.ravel()], kind="stable")[:target - painted]]
                    new = np.zeros_like(mask)
                    new.ravel()[idx] = True
                    count = target - painted
                mask |= new
                painted += count
                y, x = ny, nx
                if painted >= target:
                    break
    return torch.from_numpy(out)
