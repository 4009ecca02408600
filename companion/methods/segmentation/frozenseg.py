"""FrozenSeg (Chen et al. 2024): a light trainable mask decoder between two frozen foundation models — a
vision-language backbone (CLIP) and a localisation model (SAM) — plus a mask-proposal ensemble.

- :class:`ProposalDecoder` — the decoder on frozen toy-CLIP patch features (8×8): ``models.seg.QueryDecoder``
  (Mask2Former-style) with a light pixel decoder (a ×2 transposed convolution to 16×16 mask features). With
  ``inject=True`` the frozen ``sam_lite`` image features are injected as in the paper: into the queries
  (cross-attention each layer: the Query Injector) and into the pixel and mask features (1×1 projections added:
  the Feature Injector). Masks are upsampled bilinearly to 32×32. It trains with
  ``models.seg.set_objective`` (the Hungarian set loss with deep supervision) and predicts with ``predict_batched``.
- :func:`top_k` — the k proposals of highest objectness; :func:`everything` — SAM's automatic mask generator
  in small: a grid of positive point prompts, a confidence score per mask, non-maximum suppression;
  :func:`ensemble` — the paper's proposal ensemble for recall (decoder proposals concatenated with the
  zero-shot SAM masks, as in the official ``recall_inference_with_everything``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data import refer
from ...models.seg import QueryDecoder


class ProposalDecoder(nn.Module):
    """Class-agnostic proposals from frozen features: clip (N, clip_dim, 8, 8) [+ sam (N, sam_dim, 8, 8) when
    ``inject``] → dict(masks (N, Q, 32, 32) logits, objectness (N, Q), aux [(masks, objectness)])."""

    def __init__(self, queries: int = 16, inject: bool = False, dim: int = 64, layers: int = 3, heads: int = 4,
                 clip_dim: int = 64, sam_dim: int = 64, mask_dim: int = 32):
        super().__init__()
        self.inject = inject
        self.decoder = QueryDecoder(dim=dim, queries=queries, layers=layers, heads=heads, pixel_dim=clip_dim,
                                    inject_dim=sam_dim if inject else None, mask_dim=mask_dim)
        self.upsample = nn.Sequential(nn.ConvTranspose2d(clip_dim, mask_dim, 2, stride=2), nn.GELU(),
                                      nn.Conv2d(mask_dim, mask_dim, 3, padding=1))
        self.feature_injector = nn.Conv2d(sam_dim, clip_dim, 1) if inject else None

    def forward(self, clip: torch.Tensor, sam: torch.Tensor | None = None, size: int = refer.SIZE) -> dict:
        if self.inject and sam is None:
            raise ValueError("this decoder injects sam_lite features: pass sam=")
        pixel = clip if not self.inject else clip + self.feature_injector(sam)
        out = self.decoder(clip, inject=sam if self.inject else None, mask_features=self.upsample(pixel))
        resize = lambda m: F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)  # noqa: E731
        out["masks"] = resize(out["masks"])
        out["aux"] = [(resize(m), o) for m, o in out["aux"]]
        return out


def top_k(masks: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k proposals of highest score: masks (N, Q, H, W), scores (N, Q) → (N, min(k, Q), H, W)."""
    idx = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return masks[torch.arange(len(masks))[:, None], idx]


def grid_points(stride: int = 4, size: int = refer.SIZE) -> torch.Tensor:
    """SAM's point grid: (G, 2) pixel coordinates (x, y) every ``stride`` pixels, centred in each cell."""
    c = torch.arange(stride // 2, size, stride, dtype=torch.float32)
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1)


def nms(masks: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy mask non-maximum suppression per image: masks (N, G, H, W) bool, scores (N, G) → keep (N, G)
    bool (a mask is dropped when it overlaps a kept, higher-scoring one with IoU > ``threshold``)."""
    n, g = scores.shape
    flat = masks.flatten(2).float()
    inter = flat @ flat.transpose(1, 2)  # (N, G, G)
    area = flat.sum(-1)
    ious = inter / (area[:, :, None] + area[:, None, :] - inter).clamp_min(1)
    order = scores.argsort(dim=1, descending=True)
    keep = torch.zeros(n, g, dtype=torch.bool)
    for i in range(n):
        kept = []
        for j in order[i].tolist():
            if not kept or bool((ious[i, j, kept] <= threshold).all()):
                kept.append(j)
        keep[i, kept] = True
    return keep


@torch.no_grad()
def everything(sam, features: torch.Tensor, stride: int = 4, score_threshold: float = 0.8,
               nms_threshold: float = 0.7, batch: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's automatic mask generator in small: one positive point prompt at each grid point (``grid_points``),
    a score per mask (the mean foreground probability inside it, a stand-in for SAM's predicted IoU), masks
    scoring under ``score_threshold`` or empty dropped, then NMS. features (N, C, 8, 8) = ``sam.image_features``
    → (masks (N, G, 32, 32) bool, keep (N, G) bool)."""
    n = len(features)
    pts = grid_points(stride)
    g = len(pts)
    prompts = torch.cat([pts, torch.ones(g, 1)], 1)[None, :, None].expand(n, g, 1, 3).reshape(n * g, 1, 3)
    feats = features.repeat_interleave(g, dim=0)
    logits = torch.cat([sam(None, points=prompts[i:i + batch], features=feats[i:i + batch])
                        for i in range(0, n * g, batch)]).view(n, g, refer.SIZE, refer.SIZE)
    masks = logits > 0
    prob = logits.sigmoid()
    area = masks.flatten(2).sum(-1)
    score = (prob * masks).flatten(2).sum(-1) / area.clamp_min(1)
    valid = (area > 0) & (score >= score_threshold)
    keep = nms(masks, torch.where(valid, score, -1.0), nms_threshold) & valid
    return masks, keep


def ensemble(decoder_masks: torch.Tensor, sam_masks: torch.Tensor, sam_keep: torch.Tensor) -> torch.Tensor:
    """The proposal ensemble for recall: decoder proposals (N, k, H, W) concatenated with the kept zero-shot SAM
    masks (dropped ones blanked) → (N, k + G, H, W) bool."""
    return torch.cat([decoder_masks, sam_masks & sam_keep[..., None, None]], dim=1)


def paint(masks: torch.Tensor) -> torch.Tensor:
    """Proposals (K, H, W) bool → an RGB picture (3, H, W): each proposal in its own colour (later ones on top)
    over black, for the figures."""
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.7, 0.1], [0.2, 0.3, 0.95], [0.95, 0.8, 0.1],
                            [0.8, 0.2, 0.8], [0.1, 0.8, 0.85], [0.95, 0.5, 0.1], [0.6, 0.6, 0.6]])
    out = torch.zeros(3, *masks.shape[-2:])
    for j, m in enumerate(masks):
        out = torch.where(m, colours[j % len(colours)][:, None, None], out)
    return out
