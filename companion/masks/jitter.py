"""IoU-controlled jitter of ground-truth masks: imperfect "proposals" at a chosen overlap with the truth.

``iou_jitter(masks, target_iou)`` tries, per mask, ``candidates`` random edits and keeps the one whose IoU with
the original is closest to the target. An edit is a rigid shift (up to ``max_shift`` pixels; none for half of
the candidates) of a dilation or erosion by up to ``max_grow`` pixels (3×3 steps), then flips of a random share
of the pixels on the mask's boundary band (fine steps of IoU, which small objects need). It returns the jittered
masks and the IoU each reached, so callers can check the tolerance (objects a few pixels wide reach only some
IoU values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _dilate(masks: torch.Tensor, outside: bool = False) -> torch.Tensor:
    """(K, H, W) bool → dilated by one 3×3 step (pixels outside the image count as ``outside``)."""
    h, w = masks.shape[-2:]
    padded = F.pad(masks, (1, 1, 1, 1), value=outside)
    out = torch.zeros_like(masks)
    for dy in range(3):
        for dx in range(3):
            out |= padded[:, dy:dy + h, dx:dx + w]
    return out


def _grow(masks: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(K, H, W) bool masks dilated (steps > 0) or eroded (steps < 0) by |steps| 3×3 steps, per mask."""
    out, dil, ero = masks.clone(), masks, masks
    for k in range(1, int(steps.abs().max()) + 1 if len(steps) else 1):
        dil, ero = _dilate(dil), ~_dilate(~ero, outside=True)
        out = torch.where((steps == k)[:, None, None], dil, out)
        out = torch.where((steps == -k)[:, None, None], ero, out)
    return out


def _shift(masks: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, pad: int) -> torch.Tensor:
    """(K, H, W) masks moved by integer (dx, dy) each, zeros shifted in."""
    k, h, w = masks.shape
    padded = F.pad(masks, (pad, pad, pad, pad))
    rows = (torch.arange(h)[None, :] + pad - dy[:, None])  # (K, H)
    cols = (torch.arange(w)[None, :] + pad - dx[:, None])  # (K, W)
    return padded[torch.arange(k)[:, None, None], rows[:, :, None], cols[:, None, :]]


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool → (...) intersection over union (1 where both are empty)."""
    inter = (a & b).flatten(-2).sum(-1).float()
    union = (a | b).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def iou_jitter(masks: torch.Tensor, target_iou, generator: torch.Generator | None = None, candidates: int = 32,
               max_shift: int = 4, max_grow: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) bool masks → (jittered (N, H, W) bool, reached IoU (N,)) with IoU as close as the candidates
    allow to ``target_iou`` (a number or (N,)). ``target_iou = 1`` returns the masks unchanged."""
    n, h, w = masks.shape
    target = torch.as_tensor(target_iou, dtype=torch.float32).expand(n)
    if bool(((target < 0) | (target > 1)).any()):
        raise ValueError("target_iou must be in [0, 1]")
    k = n * candidates
    dx = torch.randint(-max_shift, max_shift + 1, (k,), generator=generator)
    dy = torch.randint(-max_shift, max_shift + 1, (k,), generator=generator)
    grow = torch.randint(-max_grow, max_grow + 1, (k,), generator=generator)
    dx[::candidates], dy[::candidates], grow[::candidates] = 0, 0, 0  # the identity is always a candidate
    half = torch.arange(k) % candidates < candidates // 2
    dx, dy, grow = dx.masked_fill(half, 0), dy.masked_fill(half, 0), grow.masked_fill(half, 0)
    base = masks.repeat_interleave(candidates, dim=0)
    moved = _shift(_grow(base, grow), dx, dy, max_shift + max_grow + 1)
    band = _dilate(moved) & _dilate(~moved, outside=True)
    share = torch.rand(k, 1, 1, generator=generator) ** 2  # mostly small shares: fine IoU steps
    share[::candidates] = 0.0
    moved = moved ^ (band & (torch.rand(k, h, w, generator=generator) < share))
    moved = moved | (~moved.flatten(1).any(1)[:, None, None] & base)  # never an empty proposal for an object
    ious = iou(moved, base).view(n, candidates)
    best = (ious - target[:, None]).abs().argmin(dim=1)
    chosen = moved.view(n, candidates, h, w)[torch.arange(n), best]
    return chosen, ious[torch.arange(n), best]
