"""``SamLite``: a class-agnostic promptable segmenter with SAM's interface (not its size) for 32×32 scenes.

SAM splits segmentation into a heavy image encoder run once per image, a prompt encoder and a light mask
decoder run once per prompt. ``SamLite`` keeps that split with small convolutions:

- **image encoder** ``image_features(images (N, 3, 32, 32)) -> (N, C, 8, 8)``: prompt-free features (what
  FrozenSeg injects into its decoder; ``forward(..., features=)`` reuses them to skip the encoder);
- **prompt encoder**: points ``(N, P, 3)`` (x, y, label: +1 foreground, -1 background, 0 padding) and boxes
  ``(N, 4)`` (x0, y0, x1, y1, inclusive) in pixel-index coordinates (pixel column x, row y) are rendered as maps
  — a Gaussian bump per point (positive and negative channels), the box's interior — beside a dense logit-mask
  prompt ``(N, 32, 32)`` (positive = inside; SAM's mask input) and a flag saying whether one was given. The maps
  are downsampled to the feature grid and added to the image features; they also reach the full-resolution stage
  of the decoder. Sparse prompt embeddings ``(N, K, C)`` (SAM's sparse tokens; e.g. an MLLM's ``<SEG>``
  projected) enter as a bias on the features and as a per-token similarity map (max over tokens); zeros and
  ``None`` give the same output, and the zoo's ``sam_lite`` never saw them, so that path must be trained by its
  user (as LISA trains SAM's decoder);
- **mask decoder**: two convolutions at 8×8, then two ×2 transposed-convolution stages to (N, 32, 32) mask logits.

:func:`sample_prompts` draws the random prompts the zoo trains it with (a positive point plus sometimes a negative
one, a jittered box, or an IoU-jittered dense mask) and :func:`mask_loss` is its BCE + dice loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..masks.jitter import iou_jitter

SIZE = 32
PROMPT_KINDS = ("point", "box", "dense")
_PROMPT_CHANNELS = 5  # positive points, negative points, box interior, dense logits, dense given


def _conv(cin: int, cout: int, stride: int = 1, norm: bool = True) -> nn.Sequential:
    """3×3 conv → GroupNorm (4 groups; skipped at full resolution, where it costs most) → GELU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
                         nn.GroupNorm(4, cout) if norm else nn.Identity(), nn.GELU())


class SamLite(nn.Module):
    """Promptable segmenter for (N, 3, 32, 32) images in [0, 1]; ``dim`` = C of the (N, C, 8, 8) features.
    ``sigma``: width in pixels of the Gaussian bump a point prompt is rendered as."""

    def __init__(self, dim: int = 64, width: int = 32, sigma: float = 1.5):
        super().__init__()
        self.dim, self.sigma = dim, sigma
        self.encoder = nn.Sequential(_conv(3, 16), _conv(16, width, 2), _conv(width, width), _conv(width, dim, 2),
                                     nn.Conv2d(dim, dim, 3, padding=1))
        self.feature_norm = nn.GroupNorm(4, dim)
        self.prompt_down = nn.Sequential(_conv(_PROMPT_CHANNELS, 16, 2), _conv(16, dim, 2))
        self.sparse_bias = nn.Linear(dim, dim, bias=False)
        self.sparse_key = nn.Linear(dim, dim, bias=False)
        self.mix = nn.Sequential(_conv(dim + 1, dim), _conv(dim, dim))
        self.up = nn.Sequential(nn.ConvTranspose2d(dim, width, 2, stride=2), nn.GELU(), _conv(width, width),
                                nn.ConvTranspose2d(width, 16, 2, stride=2), nn.GELU())
        self.head = nn.Sequential(_conv(16 + _PROMPT_CHANNELS, 16), nn.Conv2d(16, 1, 1))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, 32, 32) → (N, C, 8, 8) prompt-free image features."""
        return self.encoder(images)

    def prompt_maps(self, n: int, points: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
                    dense: torch.Tensor | None = None, device=None) -> torch.Tensor:
        """The rendered prompts (N, 5, 32, 32): positive points, negative points, box interior, dense logits,
        dense-given flag (see the module doc)."""
        coords = torch.arange(SIZE, device=device, dtype=torch.float32)
        maps = torch.zeros(n, _PROMPT_CHANNELS, SIZE, SIZE, device=device)
        if points is not None:
            x, y, label = points[..., 0], points[..., 1], points[..., 2]  # (N, P)
            d2 = (coords[None, None, None, :] - x[..., None, None]) ** 2 + \
                 (coords[None, None, :, None] - y[..., None, None]) ** 2  # (N, P, H, W)
            bump = torch.exp(-d2 / (2 * self.sigma ** 2))
            maps[:, 0] = (bump * (label > 0).float()[..., None, None]).amax(1)
            maps[:, 1] = (bump * (label < 0).float()[..., None, None]).amax(1)
        if boxes is not None:
            b = boxes.float()
            inside_x = (coords[None] >= b[:, 0:1]) & (coords[None] <= b[:, 2:3])  # (N, W)
            inside_y = (coords[None] >= b[:, 1:2]) & (coords[None] <= b[:, 3:4])  # (N, H)
            maps[:, 2] = (inside_y[:, :, None] & inside_x[:, None, :]).float()
        if dense is not None:
            maps[:, 3] = dense.float().clamp(-10, 10) / 4
            maps[:, 4] = 1.0
        return maps

    def forward(self, images: torch.Tensor | None, points: torch.Tensor | None = None,
                boxes: torch.Tensor | None = None, dense: torch.Tensor | None = None,
                sparse: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits (N, 32, 32) for one prompt per image (any combination of the kinds; see the module doc).
        ``features``: precomputed ``image_features(images)`` (then ``images`` may be None)."""
        feats = self.image_features(images) if features is None else features
        n = len(feats)
        maps = self.prompt_maps(n, points, boxes, dense, device=feats.device)
        x = self.feature_norm(feats) + self.prompt_down(maps)
        if sparse is not None:
            x = x + self.sparse_bias(sparse).sum(1)[:, :, None, None]
            sim = torch.einsum("nkc,nchw->nkhw", self.sparse_key(sparse), feats) / self.dim ** 0.5
            sim = sim.amax(1, keepdim=True)
        else:
            sim = torch.zeros(n, 1, *x.shape[-2:], device=x.device)
        x = self.up(self.mix(torch.cat([x, sim], 1)))
        return self.head(torch.cat([x, maps], 1))[:, 0]


def sample_prompts(masks: torch.Tensor, kind: str, generator: torch.Generator, negative: float = 0.5,
                   box_noise: int = 1, dense_iou: tuple[float, float] = (0.5, 0.9)) -> dict:
    """Random prompts for (N, 32, 32) bool object masks (each non-empty) → ``forward`` keyword arguments.

    ``point``: a positive point on a random pixel of the object, plus with probability ``negative`` a negative
    point on a random pixel outside it (else padding); ``box``: the bounding box with each side moved by up to
    ``box_noise`` pixels; ``dense``: the mask IoU-jittered to a target drawn from ``dense_iou``
    (:func:`companion.masks.jitter.iou_jitter`) as ±4 logits."""
    n, h, w = masks.shape
    flat = masks.flatten(1).float()
    if kind == "point":
        pos = torch.multinomial(flat, 1, generator=generator)[:, 0]
        neg = torch.multinomial((1 - flat).clamp_min(1e-6), 1, generator=generator)[:, 0]
        use_neg = torch.rand(n, generator=generator) < negative
        pts = torch.stack([torch.stack([pos % w, pos // w], -1), torch.stack([neg % w, neg // w], -1)], 1).float()
        label = torch.stack([torch.ones(n), torch.where(use_neg, -1.0, 0.0)], 1)
        return {"points": torch.cat([pts, label[..., None]], -1)}
    if kind == "box":
        rows, cols = masks.any(2), masks.any(1)
        idx = torch.arange(h)
        box = torch.stack([torch.where(cols, idx, w).amin(1), torch.where(rows, idx, h).amin(1),
                           torch.where(cols, idx, -1).amax(1), torch.where(rows, idx, -1).amax(1)], 1)
        noise = torch.randint(-box_noise, box_noise + 1, (n, 4), generator=generator)
        return {"boxes": (box + noise).clamp(0, h - 1).float()}
    if kind == "dense":
        target = torch.empty(n).uniform_(*dense_iou, generator=generator)
        jittered, _ = iou_jitter(masks, target, generator=generator)
        return {"dense": jittered.float() * 8 - 4}
    raise ValueError(f"kind must be one of {PROMPT_KINDS}, got {kind!r}")


def mask_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean BCE + dice loss of (N, H, W) logits against (N, H, W) bool masks."""
    target = masks.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = logits.sigmoid().flatten(1)
    dice = 1 - (2 * (prob * target.flatten(1)).sum(1) + 1) / (prob.sum(1) + target.flatten(1).sum(1) + 1)
    return bce + dice.mean()
