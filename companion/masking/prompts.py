"""Visual prompts: marking one candidate object in an image for a CLIP-like model (Fine-Grained Visual Prompting).

``visual_prompt(images, masks, kind)`` with images (N, 3, H, W) in [0, 1] and masks (N, H, W) bool (True = the
candidate object):

- ``crop`` — the candidate's bounding box (plus a 1-pixel margin) cut out and resized back to H × W (bilinear);
- ``box`` / ``circle`` — a red rectangle / ellipse outline drawn around the bounding box (not over the object);
- ``black`` / ``grey`` / ``blur`` — reverse masks: everything outside the candidate filled with black, grey or a
  Gaussian blur of the image (:func:`companion.masking.fill` with the keep mask = the candidate); the
  candidate's own pixels are left untouched;
- ``blur_circle`` — the blur reverse mask with the ellipse drawn on top.

:func:`crop_zero_shot` — a CLIP-like model's zero-shot class of every named object's crop over
:data:`companion.data.refer.CLASSES`: the premise every open-vocabulary notebook prints first (does the toy CLIP
recognise objects at all, seen and unseen classes?).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import refer
from . import fill, gaussian_blur

PROMPTS = ("crop", "box", "circle", "black", "grey", "blur", "blur_circle")
RED = (1.0, 0.0, 0.0)


def bounding_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool → (N, 4) int64 (x0, y0, x1, y1), inclusive; an empty mask gives the whole image."""
    n, h, w = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    idx_h, idx_w = torch.arange(h).expand(n, h), torch.arange(w).expand(n, w)
    y0 = torch.where(rows, idx_h, h).amin(1)
    y1 = torch.where(rows, idx_h, -1).amax(1)
    x0 = torch.where(cols, idx_w, w).amin(1)
    x1 = torch.where(cols, idx_w, -1).amax(1)
    empty = ~masks.flatten(1).any(1)
    box = torch.stack([x0, y0, x1, y1], 1)
    return torch.where(empty[:, None], torch.tensor([0, 0, w - 1, h - 1]), box)


def _outline(masks: torch.Tensor, kind: str, width: int = 1) -> torch.Tensor:
    """(N, H, W) bool outline of each mask's bounding box (``box``, one pixel outside it) or of the ellipse
    through the box's corners (``circle``): neither touches the object."""
    n, h, w = masks.shape
    b = bounding_boxes(masks).float()
    x0, y0, x1, y1 = (b[:, i, None, None] for i in range(4))
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    if kind == "box":
        inside = (xx >= x0 - 1) & (xx <= x1 + 1) & (yy >= y0 - 1) & (yy <= y1 + 1)
        core = (xx >= x0 - 1 + width) & (xx <= x1 + 1 - width) & (yy >= y0 - 1 + width) & (yy <= y1 + 1 - width)
        return inside & ~core
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = ((x1 - x0) / 2 + 0.5) * 2**0.5 + 0.5, ((y1 - y0) / 2 + 0.5) * 2**0.5 + 0.5  # around the whole box
    d = torch.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return (d >= 1.0) & (d <= 1.0 + width / torch.minimum(rx, ry))


def _draw(images: torch.Tensor, outline: torch.Tensor, colour=RED) -> torch.Tensor:
    c = torch.tensor(colour, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return torch.where(outline[:, None].to(images.device), c, images)


def crop(images: torch.Tensor, masks: torch.Tensor, margin: int = 1) -> torch.Tensor:
    """Each image's candidate bounding box (+ ``margin``) resized back to the image size (bilinear)."""
    n, _, h, w = images.shape
    b = bounding_boxes(masks)
    out = torch.empty_like(images)
    for i in range(n):
        x0, y0 = max(0, int(b[i, 0]) - margin), max(0, int(b[i, 1]) - margin)
        x1, y1 = min(w - 1, int(b[i, 2]) + margin), min(h - 1, int(b[i, 3]) + margin)
        patch = images[i:i + 1, :, y0:y1 + 1, x0:x1 + 1]
        out[i] = F.interpolate(patch, size=(h, w), mode="bilinear", align_corners=False)[0]
    return out


def visual_prompt(images: torch.Tensor, masks: torch.Tensor, kind: str, blur_sigma: float = 1.5) -> torch.Tensor:
    """``images`` (N, 3, H, W) with candidate ``masks`` (N, H, W) marked by prompt ``kind`` (see module doc)."""
    if kind not in PROMPTS:
        raise ValueError(f"unknown visual prompt {kind!r}; choose one of {', '.join(PROMPTS)}")
    if masks.dtype != torch.bool or masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"masks must be bool (N, H, W) matching the images, got {tuple(masks.shape)} {masks.dtype}")
    keep = masks[:, None].to(images.device)
    if kind == "crop":
        return crop(images, masks)
    if kind in ("box", "circle"):
        return _draw(images, _outline(masks, kind))
    if kind in ("black", "grey"):
        return fill(images, keep, kind)
    blurred = torch.where(keep, images, gaussian_blur(images, blur_sigma))
    return blurred if kind == "blur" else _draw(blurred, _outline(masks, "circle"))


@torch.no_grad()
def crop_zero_shot(clip, scenes: refer.ReferScenes, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot classification of every named object's crop (``visual_prompt(..., "crop")``) over the class names
    by ``clip`` (``encode_image`` and ``classifier``, e.g. ``zoo.toy_clip()``) → (K,) bool correct, (K,) int64
    true class, objects in scene-then-slot order."""
    scene, slot = (scenes.labels >= 0).nonzero(as_tuple=True)
    labels = scenes.labels[scene, slot]
    crops = visual_prompt(scenes.images[scene], scenes.instances[scene, slot], "crop")
    classifier = clip.classifier(refer.CLASSES)
    pred = torch.cat([(clip.encode_image(batch) @ classifier.T).argmax(1) for batch in crops.split(batch_size)])
    return pred == labels, labels
