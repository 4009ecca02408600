"""TETRIS (Moskalenko et al., AAAI 2024) at toy scale: how much a click-conditioned segmenter's IoU depends on
where the click lands, measured exhaustively and searched for with gradients on the click coordinates.

The segmenter is the package's :class:`~companion.models.unet.UNet` without time embedding, with the two click
maps of :func:`companion.data.clicks.click_maps` as extra input channels, one logit map out. Masks and
predictions are (N, H, W) bool; clicks (N, K, 2) as continuous (x, y) with ``positive`` and ``valid`` (N, K).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ...data import clicks
from ...eval import mask_iou
from ...models.unet import UNet


def segmenter(channels=(16, 32)) -> UNet:
    """The click-conditioned segmenter: RGB + (positive, negative) click maps → one logit map."""
    return UNet(in_channels=3, out_channels=1, channels=channels, extra_channels=2)


def logits(model: UNet, images: torch.Tensor, coords: torch.Tensor, positive: torch.Tensor, sigma: float,
           valid: torch.Tensor | None = None) -> torch.Tensor:
    """Images (N, 3, H, W), clicks (N, K, 2) → logits (N, H, W)."""
    maps = clicks.click_maps(coords, positive, images.shape[-1], sigma, valid)
    return model(images, extra=maps)[:, 0]


def soft_iou(logit: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Differentiable IoU of sigmoid probabilities (N, H, W) with bool masks → (N,)."""
    p, m = torch.sigmoid(logit).flatten(1), masks.flatten(1).to(logit)
    inter = (p * m).sum(1)
    return inter / (p.sum(1) + m.sum(1) - inter).clamp_min(1e-6)


def training_loss(sigma: float, extra_click_prob: float, max_clicks: int, generator: torch.Generator) -> Callable:
    """``loss_fn(model, images, masks)`` for ``train.fit``: standard simulated clicks, RITM-style iterative
    sampling — the first click at the standard position on the object; then, with probability
    ``extra_click_prob`` per further click (up to ``max_clicks``), the model's own prediction (no gradient) from
    the clicks so far gives the next standard corrective click. Binary cross-entropy on the last prediction."""

    def loss_fn(model, images, masks):
        masks = masks[:, 0] if masks.dim() == 4 else masks
        coords, positive = clicks.standard_clicks(masks, torch.zeros_like(masks))
        coords, positive = coords[:, None].to(images), positive[:, None].to(images.device)
        for _ in range(max_clicks - 1):
            if torch.rand((), generator=generator) >= extra_click_prob:
                break
            with torch.no_grad():
                pred = logits(model, images, coords, positive, sigma) > 0
            c, p = clicks.standard_clicks(masks.cpu(), pred.cpu())
            coords = torch.cat([coords, c[:, None].to(images)], 1)
            positive = torch.cat([positive, p[:, None].to(images.device)], 1)
        out = logits(model, images, coords, positive, sigma)
        return F.binary_cross_entropy_with_logits(out, masks.to(out))

    return loss_fn


@torch.no_grad()
def first_click_ious(model: UNet, images: torch.Tensor, masks: torch.Tensor, coords: torch.Tensor,
                     sigma: float, batch_size: int = 2048) -> torch.Tensor:
    """IoU after one positive click at each of K positions per image: coords (N, K, 2) → (N, K), all N·K
    forwards batched."""
    n, k = coords.shape[:2]
    flat = coords.reshape(n * k, 1, 2)
    imgs = images.repeat_interleave(k, 0)
    gts = masks.repeat_interleave(k, 0)
    pos = torch.ones(n * k, 1, dtype=torch.bool)
    out = []
    for i in range(0, n * k, batch_size):
        pred = logits(model, imgs[i:i + batch_size], flat[i:i + batch_size], pos[i:i + batch_size], sigma) > 0
        out.append(mask_iou(pred, gts[i:i + batch_size]))
    return torch.cat(out).view(n, k)


def iou_maps(model: UNet, images: torch.Tensor, masks: torch.Tensor, sigma: float,
             batch_size: int = 2048) -> torch.Tensor:
    """The exhaustive map: IoU after one positive click at every pixel centre of the object → (N, H, W),
    NaN off the object (a positive click there is not a valid click); all forwards batched."""
    n, h, w = masks.shape
    rows, ys, xs = masks.nonzero(as_tuple=True)
    coords = torch.stack([xs, ys], -1).float() + 0.5
    out = torch.full((n, h, w), float("nan"))
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            r = rows[i:i + batch_size]
            pos = torch.ones(len(r), 1, dtype=torch.bool)
            pred = logits(model, images[r], coords[i:i + batch_size, None], pos, sigma) > 0
            out[r, ys[i:i + batch_size], xs[i:i + batch_size]] = mask_iou(pred, masks[r])
    return out


def click_score_fn(model: UNet, images: torch.Tensor, masks: torch.Tensor, sigma: float) -> Callable:
    """For ``attacks.optimise_clicks``: one positive click (N, 2) → (soft IoU (N,), hard IoU (N,))."""

    def score(coords):
        out = logits(model, images, coords[:, None], torch.ones(len(coords), 1, dtype=torch.bool), sigma)
        return soft_iou(out, masks), mask_iou(out.detach() > 0, masks)

    return score


@torch.no_grad()
def interaction(model: UNet, images: torch.Tensor, masks: torch.Tensor, simulator: Callable, max_clicks: int,
                sigma: float) -> torch.Tensor:
    """Per-click IoUs (N, max_clicks) of a click sequence: ``simulator(masks, preds)`` → (coords (N, 2),
    positive (N,)) gives each next click from the current prediction (empty before the first)."""
    pred = torch.zeros_like(masks)
    coords = torch.zeros(len(masks), 0, 2)
    positive = torch.zeros(len(masks), 0, dtype=torch.bool)
    ious = []
    for _ in range(max_clicks):
        c, p = simulator(masks, pred)
        coords, positive = torch.cat([coords, c[:, None]], 1), torch.cat([positive, p[:, None]], 1)
        pred = logits(model, images, coords, positive, sigma) > 0
        ious.append(mask_iou(pred, masks))
    return torch.stack(ious, 1)


def disk_iou(masks: torch.Tensor, coords: torch.Tensor, radius: float) -> torch.Tensor:
    """The trivial click-only baseline: IoU of a disk of ``radius`` px around each click (N, 2) → (N,)."""
    h, w = masks.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    disk = (xx[None] - coords[:, 0, None, None]) ** 2 + (yy[None] - coords[:, 1, None, None]) ** 2 <= radius**2
    return mask_iou(disk, masks)
