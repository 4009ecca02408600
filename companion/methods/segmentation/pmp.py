"""Prompt-guided Mask Proposal (PMP; Li et al., 2024) at toy scale: a Mask2Former-style mask generator whose
object queries also cross-attend to the text embeddings of the prompted class names, so that its few proposals
go to the objects the prompts name; proposals are then classified by toy CLIP against the class-name embeddings
(the two-stage open-vocabulary pipeline, unchanged): from their crops, or from mask-pooled patch features.

- :func:`draw_prompts` — per scene, a prompt list: some of the classes present plus absent distractor classes;
- :func:`prompted_slots` — which instance slots belong to a prompted class;
- :class:`PromptedSegmenter` — a light trainable pixel decoder (a conv stem on the image at half resolution
  next to the upsampled frozen CLIP features: Mask2Former's high-resolution "mask features") and the package's
  :class:`~companion.models.seg.QueryDecoder` on the frozen 8×8 CLIP features (with the stem pooled in), with
  or without its text cross-attention (``text=True`` is PMP);
- training and prediction use :func:`companion.models.seg.set_objective` / ``predict_batched`` (the Hungarian
  set loss on the last layer plus the earlier layers' predictions: deep supervision, as in Mask2Former);
- :func:`proposals`, :func:`grid_proposals`, :func:`classify_crops`, :func:`classify`, :func:`prompt_ious` —
  evaluation: binary proposals kept by objectness, a fixed-grid trivial proposal set, CLIP classification of
  proposals (crops; mask pooling), and the IoU of each prompted class's predicted region with its ground truth.

Shapes: scenes (N, 3, 32, 32); frozen CLIP features (N, 64, 8, 8); instances (N, M, 32, 32) bool with labels
(N, M) (``refer.NONE`` empty, ``refer.CLUTTER_LABEL`` clutter); prompts (N, P) class indices, ``refer.NONE`` =
padding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data import refer
from ...masking.prompts import visual_prompt
from ...models.seg import QueryDecoder, mask_pool


def draw_prompts(labels: torch.Tensor, generator: torch.Generator, present: int = 2, absent: int = 1,
                 pool=None) -> torch.Tensor:
    """labels (N, M) → prompts (N, present + absent) class indices: 1..``present`` distinct classes of the
    scene's named objects (how many uniform, capped by what is there) then ``absent`` distinct classes from
    ``pool`` (default all classes) not in the scene; unused places ``refer.NONE``."""
    pool = torch.as_tensor(range(len(refer.CLASSES)) if pool is None else sorted(pool))
    out = torch.full((len(labels), present + absent), refer.NONE, dtype=torch.long)
    for i, row in enumerate(labels):
        there = row[row >= 0].unique()
        k = min(len(there), int(torch.randint(1, present + 1, (), generator=generator)))
        out[i, :k] = there[torch.randperm(len(there), generator=generator)[:k]]
        missing = pool[~torch.isin(pool, there)]
        out[i, present:present + absent] = missing[torch.randperm(len(missing), generator=generator)[:absent]]
    return out


def prompted_slots(labels: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """labels (N, M), prompts (N, P) → (N, M) bool: the slot holds a named object of a prompted class."""
    hit = (labels[:, :, None] == prompts[:, None, :]) & (prompts[:, None, :] >= 0)
    return hit.any(-1) & (labels >= 0)


class PromptedSegmenter(nn.Module):
    """Frozen CLIP features (N, clip_dim, 8, 8) + images (N, 3, H, W) [+ prompt embeddings (N, P, clip_dim)] →
    the decoder's dict with mask logits at image resolution (N, Q, H, W).

    The mask features, at ``mask_size``² (half the image side by default), are a 2-layer conv stem on the image
    (``stem`` channels, the first conv strided) concatenated with the CLIP features upsampled bilinearly; the
    queries attend to the 8×8 CLIP features concatenated with the stem's features area-pooled to 8×8 (masked
    attention with the predictions area-pooled to 8×8) and,
    with ``text=True``, to the prompts' text embeddings. Mask logits (last layer and ``aux``) are upsampled
    bilinearly to the image size.
    """

    def __init__(self, queries: int, text: bool, dim: int = 64, layers: int = 3, heads: int = 4,
                 clip_dim: int = 64, stem: int = 16, mask_size: int = 16):
        super().__init__()
        self.mask_size = mask_size
        stride = refer.SIZE // mask_size
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, stride=stride, padding=1), nn.GELU(),
                                  nn.Conv2d(stem, stem, 3, padding=1))
        self.decoder = QueryDecoder(dim=dim, queries=queries, layers=layers, heads=heads, pixel_dim=clip_dim + stem,
                                    text_dim=clip_dim if text else None, mask_dim=stem + clip_dim)
        self.text = text

    def forward(self, pixel: torch.Tensor, images: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> dict:
        up = F.interpolate(pixel, size=(self.mask_size,) * 2, mode="bilinear", align_corners=False)
        low = self.stem(images)
        mask_features = torch.cat([low, up], dim=1)
        keys = torch.cat([pixel, F.adaptive_avg_pool2d(low, pixel.shape[-2:])], dim=1)
        out = self.decoder(keys, text=text if self.text else None, text_mask=text_mask if self.text else None,
                           mask_features=mask_features)
        size = images.shape[-2:]
        resize = lambda m: F.interpolate(m, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        out["masks"] = resize(out["masks"])
        out["aux"] = [(resize(m), o) for m, o in out["aux"]]
        return out


def prompt_tokens(class_text: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """class_text (K, D) embeddings of every class name, prompts (N, P) → tokens (N, P, D) and valid (N, P)."""
    valid = prompts >= 0
    return class_text[prompts.clamp_min(0)] * valid[..., None], valid


def proposals(out: dict, objectness: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder output → (masks (N, Q, H, W) bool: logit > 0, keep (N, Q) bool: sigmoid(objectness) above the
    threshold and a non-empty mask)."""
    masks = out["masks"] > 0
    keep = (out["objectness"].sigmoid() > objectness) & masks.flatten(2).any(-1)
    return masks, keep


def grid_proposals(n: int, cells: int, size: int = refer.SIZE) -> torch.Tensor:
    """A trivial proposal set: the ``cells``×``cells`` grid of equal squares → (n, cells², size, size) bool."""
    side = size // cells
    grid = torch.zeros(cells * cells, size, size, dtype=torch.bool)
    for k in range(cells * cells):
        r, c = divmod(k, cells)
        grid[k, r * side:(r + 1) * side, c * side:(c + 1) * side] = True
    return grid.expand(n, -1, -1, -1)


def classify(dense: torch.Tensor, masks: torch.Tensor, class_text: torch.Tensor) -> torch.Tensor:
    """The second stage: each proposal's mask-pooled CLIP feature (``mask_pool`` of dense (N, D, h, w) over
    masks (N, Q, H, W)) against class embeddings (K, D) → (N, Q) index of the most similar class."""
    pooled = F.normalize(mask_pool(dense, masks), dim=-1)  # (N, Q, D)
    return (pooled @ class_text.T).argmax(-1)


@torch.no_grad()
def classify_crops(clip, images: torch.Tensor, masks: torch.Tensor, keep: torch.Tensor,
                   class_text: torch.Tensor) -> torch.Tensor:
    """The second stage with crops: each kept proposal's bounding-box crop (``visual_prompt(..., "crop")``)
    encoded by the CLIP image tower against class embeddings (K, D). images (N, 3, H, W), masks (N, Q, H, W)
    bool, keep (N, Q) → (N, Q) class index (``refer.NONE`` where not kept)."""
    out = torch.full(keep.shape, refer.NONE, dtype=torch.long)
    idx = keep.nonzero()
    if len(idx):
        crops = visual_prompt(images[idx[:, 0]], masks[idx[:, 0], idx[:, 1]], "crop")
        emb = torch.cat([clip.encode_image(c) for c in crops.split(512)])
        out[idx[:, 0], idx[:, 1]] = (emb @ class_text.T).argmax(-1).cpu()
    return out


def prompt_ious(masks: torch.Tensor, keep: torch.Tensor, classes: torch.Tensor, prompts: torch.Tensor,
                instances: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Semantic IoU per prompt: the union of kept proposals classified as the prompted class against the union
    of that class's instances. masks (N, Q, H, W) bool, keep and classes (N, Q), prompts (N, P), instances
    (N, M, H, W) bool, labels (N, M) → (N, P) IoU; NaN where the prompt is padding or its class is absent
    (absent prompts are scored separately by false-positive area)."""
    n, p = prompts.shape
    out = torch.full((n, p), float("nan"))
    for j in range(p):
        c = prompts[:, j]
        pred = (masks & (keep & (classes == c[:, None]))[..., None, None]).any(1)  # (N, H, W)
        gt = (instances & (labels == c[:, None])[..., None, None]).any(1)
        inter, union = (pred & gt).flatten(1).sum(1), (pred | gt).flatten(1).sum(1)
        present = (c >= 0) & gt.flatten(1).any(1)
        out[present, j] = (inter[present] / union[present]).float()
    return out
