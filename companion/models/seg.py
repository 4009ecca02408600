"""Segmentation heads shared by the open-vocabulary papers: mask pooling and one Mask2Former-style decoder.

:func:`mask_pool` — the average of dense features (N, C, h, w) inside each of K masks given at image resolution
(N, K, H, W): masks are area-resized to the feature grid, so a feature cell counts by the share of it the mask
covers (FC-CLIP's and Mask-Adapter's baseline classifier of mask proposals).

:class:`QueryDecoder` — learned queries refined by masked cross-attention to pixel features (optionally also
cross-attention to text tokens, PMP; and to injected frozen foundation features, FrozenSeg), self-attention and
an MLP, built from ``models.layers.Attention``/``MLP``; per-layer mask logits = MLP(query) · pixel embedding and
an objectness logit per query.

:func:`hungarian_mask_loss` — the class-agnostic set loss (one-to-one Hungarian matching on BCE + dice −
objectness, then BCE + dice on matched pairs and objectness BCE on all queries).

:func:`recall_at_iou` — for each valid target mask, whether some proposal reaches an IoU threshold.

:func:`deep_set_loss` — the set loss of the last layer plus ``aux_weight`` × each earlier layer's (deep supervision,
each layer matched on its own); :func:`set_objective` wraps it as a ``train.fit`` loss over scene indices and
:func:`predict_batched` runs a decoder over all scenes in batches (pmp and frozenseg train and read decoders so).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .layers import MLP, Attention


def mask_pool(features: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N, C, h, w) features, (N, K, H, W) masks (bool or soft, H and W multiples of h and w) → (N, K, C)."""
    n, c, h, w = features.shape
    weights = F.adaptive_avg_pool2d(masks.float(), (h, w)) if masks.shape[-2:] != (h, w) else masks.float()
    total = weights.flatten(2).sum(-1, keepdim=True)  # (N, K, 1)
    pooled = torch.einsum("nkhw,nchw->nkc", weights, features)
    return pooled / total.clamp_min(eps)


def _fourier_positions(h: int, w: int, bands: int, device) -> torch.Tensor:
    """(h·w, 4·bands) sin/cos features of the cell centres' (y, x) in [-1, 1], row-major."""
    ys = (torch.arange(h, device=device) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device) + 0.5) / w * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)  # (hw, 2)
    freqs = torch.pi * 2.0 ** torch.arange(bands, device=device)  # (bands,)
    angles = (grid[:, :, None] * freqs).flatten(1)  # (hw, 2·bands)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _DecoderLayer(nn.Module):
    """One pre-LN decoder layer: masked cross-attention to pixels → [text] → [inject] → self-attention → MLP."""

    def __init__(self, dim: int, heads: int, text: bool, inject: bool, layer_idx: int):
        super().__init__()
        self.norm_pixel, self.pixel_attn = nn.LayerNorm(dim), Attention(dim, heads, cross=True, layer_idx=layer_idx)
        self.norm_text = nn.LayerNorm(dim) if text else None
        self.text_attn = Attention(dim, heads, cross=True, layer_idx=layer_idx) if text else None
        self.norm_inject = nn.LayerNorm(dim) if inject else None
        self.inject_attn = Attention(dim, heads, cross=True, layer_idx=layer_idx) if inject else None
        self.norm_self, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads, layer_idx=layer_idx)
        self.norm_mlp, self.mlp = nn.LayerNorm(dim), MLP(dim)

    def forward(self, x, pos, pixel, pixel_mask, text=None, text_mask=None, text_gate=None, inject=None):
        """x, pos (N, Q, D); pixel (N, hw, D) keys with positions added; pixel_mask (N, 1, Q, hw) bool;
        text (N, T, D), text_mask (N, 1, 1, T) bool, text_gate (N, 1, 1) (0 = this row has no text);
        inject (N, hw', D) → x (N, Q, D)."""
        x = x + self.pixel_attn(self.norm_pixel(x) + pos, context=pixel, mask=pixel_mask)[0]
        if self.text_attn is not None and text is not None:
            x = x + self.text_attn(self.norm_text(x) + pos, context=text, mask=text_mask)[0] * text_gate
        if self.inject_attn is not None and inject is not None:
            x = x + self.inject_attn(self.norm_inject(x) + pos, context=inject)[0]
        x = x + self.self_attn(self.norm_self(x) + pos)[0]
        return x + self.mlp(self.norm_mlp(x))


class QueryDecoder(nn.Module):
    """A Mask2Former-style transformer decoder over pixel features (the ONE query decoder of the package).

    ``queries`` learned query features (and learned query positions) are refined by ``layers`` pre-LN layers,
    each: masked cross-attention to the pixel features (a query attends only to the cells its previous mask
    prediction holds above 0.5; all cells where that mask is empty) → [cross-attention to text tokens, if
    ``text_dim``] → [cross-attention to injected foundation features, if ``inject_dim``] → self-attention among
    the queries → MLP. Before the first layer and after each, a shared head predicts per-query masks =
    MLP(query) · pixel embedding and an objectness logit. Pixel keys carry Fourier position features.

    ``inject_dim`` (FrozenSeg): frozen features (N, inject_dim, h', w') are added to the pixel features through a
    1×1 projection (resized to (h, w) by area/bilinear interpolation) and are also attended by the queries.
    ``mask_dim``: optional higher-resolution mask features (N, mask_dim, H, W) for the mask predictions only
    (Mask2Former's 1/4-scale "mask features"); the masked attention then uses the predictions area-pooled to (h, w).
    """

    def __init__(self, dim: int = 64, queries: int = 16, layers: int = 3, heads: int = 4, pixel_dim: int = 64,
                 text_dim: int | None = None, inject_dim: int | None = None, mask_dim: int | None = None,
                 pos_bands: int = 4):
        super().__init__()
        self.queries, self.pos_bands = queries, pos_bands
        self.query_feat = nn.Parameter(torch.randn(queries, dim) * 0.02)
        self.query_pos = nn.Parameter(torch.randn(queries, dim) * 0.02)
        self.pixel_proj = nn.Conv2d(pixel_dim, dim, 1)
        self.pos_proj = nn.Linear(4 * pos_bands, dim)
        self.pixel_norm = nn.LayerNorm(dim)
        self.text_proj = nn.Linear(text_dim, dim) if text_dim else None
        self.inject_proj = nn.Conv2d(inject_dim, dim, 1) if inject_dim else None
        self.mask_proj = nn.Conv2d(mask_dim, dim, 1) if mask_dim else None
        self.layers = nn.ModuleList(_DecoderLayer(dim, heads, bool(text_dim), bool(inject_dim), i)
                                    for i in range(layers))
        self.out_norm = nn.LayerNorm(dim)
        self.mask_embed = MLP(dim, mlp_ratio=1.0)
        self.objectness = nn.Linear(dim, 1)

    def _predict(self, x, mask_pixels, hw):
        """Queries (N, Q, D), mask pixel embeddings (N, D, H, W) → (mask logits (N, Q, H, W), objectness (N, Q),
        attention mask (N, 1, Q, h·w) bool: True = may attend)."""
        h = self.out_norm(x)
        masks = torch.einsum("nqd,ndhw->nqhw", self.mask_embed(h), mask_pixels)
        objectness = self.objectness(h).squeeze(-1)
        probs = masks.detach().sigmoid()
        if probs.shape[-2:] != hw:
            probs = F.adaptive_avg_pool2d(probs, hw)
        allowed = probs.flatten(2) >= 0.5  # (N, Q, hw)
        allowed = allowed | ~allowed.any(-1, keepdim=True)  # an empty mask attends everywhere
        return masks, objectness, allowed[:, None]

    def forward(self, pixel: torch.Tensor, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                inject: torch.Tensor | None = None, mask_features: torch.Tensor | None = None) -> dict:
        """pixel (N, pixel_dim, h, w); text (N, T, text_dim) with text_mask (N, T) bool (True = valid; a row
        with no valid token ignores the text); inject (N, inject_dim, h', w'); mask_features (N, mask_dim, H, W)
        → dict(masks (N, Q, H, W) last-layer logits (H, W = h, w without mask_features), objectness (N, Q)
        logits, embeds (N, Q, dim) final normed queries, aux [(masks, objectness) before the first layer and
        after each layer but the last])."""
        n, _, h, w = pixel.shape
        feats = self.pixel_proj(pixel)  # (N, D, h, w)
        inject_tokens = None
        if inject is not None:
            if self.inject_proj is None:
                raise ValueError("inject given but the decoder was built without inject_dim")
            inj = self.inject_proj(inject)
            inject_tokens = inj.flatten(2).transpose(1, 2)
            feats = feats + (inj if inj.shape[-2:] == (h, w) else F.interpolate(inj, (h, w), mode="bilinear"))
        mask_pixels = feats if mask_features is None else self.mask_proj(mask_features)
        pos = self.pos_proj(_fourier_positions(h, w, self.pos_bands, pixel.device))  # (hw, D)
        keys = self.pixel_norm(feats.flatten(2).transpose(1, 2)) + pos  # (N, hw, D)
        text_tokens = text_bias = text_gate = None
        if text is not None:
            if self.text_proj is None:
                raise ValueError("text given but the decoder was built without text_dim")
            text_tokens = self.text_proj(text)
            valid = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device) if text_mask is None \
                else text_mask.bool()
            has_text = valid.any(1, keepdim=True)  # (N, 1)
            text_gate = has_text[..., None].to(text_tokens.dtype)  # rows with no valid token skip the text
            text_bias = (valid | ~has_text)[:, None, None, :]
        x = self.query_feat.expand(n, -1, -1)
        qpos = self.query_pos.expand(n, -1, -1)
        aux = []
        masks, objectness, allowed = self._predict(x, mask_pixels, (h, w))
        for layer in self.layers:
            aux.append((masks, objectness))
            x = layer(x, qpos, keys, allowed, text_tokens, text_bias, text_gate, inject_tokens)
            masks, objectness, allowed = self._predict(x, mask_pixels, (h, w))
        return {"masks": masks, "objectness": objectness, "embeds": self.out_norm(x), "aux": aux}


def _pairwise_costs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits (Q, P), targets (M, P) float → (mean BCE (Q, M), dice loss (Q, M))."""
    pixels = logits.shape[1]
    bce = (F.softplus(logits).sum(1, keepdim=True) - logits @ targets.T) / pixels
    probs = logits.sigmoid()
    dice = 1 - (2 * probs @ targets.T + 1) / (probs.sum(1, keepdim=True) + targets.sum(1)[None] + 1)
    return bce, dice


def hungarian_mask_loss(masks: torch.Tensor, objectness: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                        dice: float = 1.0, bce: float = 1.0, obj: float = 1.0) -> torch.Tensor:
    """Mask2Former's set loss without classes. masks (N, Q, h, w) logits, objectness (N, Q) logits, targets
    (N, M, h, w) bool, valid (N, M) bool → scalar.

    Per image, the valid targets are matched one-to-one to queries by ``scipy.optimize.linear_sum_assignment``
    on the cost ``bce``·BCE + ``dice``·dice − ``obj``·sigmoid(objectness) (a target left over when M > Q is
    unmatched). Loss = ``bce``·BCE + ``dice``·dice averaged over matched pairs + ``obj``·BCE of objectness
    against 1 for matched queries and 0 for the rest, averaged over all N·Q queries. Targets must be given at
    the masks' resolution (area-pool or nearest-resize them first).
    """
    n, q = objectness.shape
    flat = masks.flatten(2)
    tflat = targets.flatten(2).to(flat.dtype)
    obj_target = torch.zeros_like(objectness)
    matched_logits, matched_targets = [], []
    with torch.no_grad():
        costs = []
        for i in range(n):
            idx = valid[i].nonzero().squeeze(1)
            b, d = _pairwise_costs(flat[i].float(), tflat[i, idx].float())
            costs.append((idx, (bce * b + dice * d - obj * objectness[i].float().sigmoid()[:, None]).cpu()))
    for i, (idx, cost) in enumerate(costs):
        if idx.numel() == 0:
            continue
        rows, cols = linear_sum_assignment(cost.numpy())
        rows, cols = torch.as_tensor(rows, device=masks.device), torch.as_tensor(cols, device=masks.device)
        obj_target[i, rows] = 1.0
        matched_logits.append(flat[i, rows])
        matched_targets.append(tflat[i, idx[cols]])
    loss = obj * F.binary_cross_entropy_with_logits(objectness, obj_target)
    if matched_logits:
        logits, tgt = torch.cat(matched_logits), torch.cat(matched_targets)  # (K, P)
        probs = logits.sigmoid()
        dice_loss = 1 - (2 * (probs * tgt).sum(1) + 1) / (probs.sum(1) + tgt.sum(1) + 1)
        loss = loss + bce * F.binary_cross_entropy_with_logits(logits, tgt) + dice * dice_loss.mean()
    return loss


def recall_at_iou(masks: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                  threshold: float = 0.5) -> torch.Tensor:
    """Proposals (N, Q, H, W) bool, targets (N, M, H, W) bool, valid (N, M) bool → (N, M) bool: whether some
    proposal reaches IoU ≥ ``threshold`` with each valid target (False for invalid slots)."""
    p, t = masks.flatten(2).float(), targets.flatten(2).float()
    inter = torch.einsum("nqp,nmp->nqm", p, t)
    union = p.sum(-1)[:, :, None] + t.sum(-1)[:, None, :] - inter
    iou = inter / union.clamp_min(1)
    best = iou.max(dim=1).values if masks.shape[1] else torch.zeros(valid.shape, device=valid.device)
    return (best >= threshold) & valid.bool()


def deep_set_loss(out: dict, targets: torch.Tensor, valid: torch.Tensor, aux_weight: float = 1.0) -> torch.Tensor:
    """``hungarian_mask_loss`` of a :class:`QueryDecoder` output's last layer + ``aux_weight`` × each earlier
    layer's (``out["aux"]``; each layer matched on its own). targets (N, M, H, W) bool, valid (N, M) bool."""
    loss = hungarian_mask_loss(out["masks"], out["objectness"], targets, valid)
    for masks, objectness in out["aux"]:
        loss = loss + aux_weight * hungarian_mask_loss(masks, objectness, targets, valid)
    return loss


def set_objective(inputs: dict, targets: torch.Tensor, valid: torch.Tensor, aux_weight: float = 1.0):
    """``loss_fn(model, idx, _)`` for ``train.fit`` over scene indices: the model is called with every tensor of
    ``inputs`` (keyword → (N, ...)) indexed by the batch's scenes, and scored by :func:`deep_set_loss`."""

    def loss_fn(model, idx, _):
        return deep_set_loss(model(**{k: v[idx] for k, v in inputs.items()}), targets[idx], valid[idx], aux_weight)

    return loss_fn


@torch.no_grad()
def predict_batched(model: nn.Module, inputs: dict, batch: int = 256) -> dict:
    """``model`` over all N scenes of ``inputs`` in batches → dict(masks (N, Q, H, W) logits, objectness (N, Q))."""
    n = len(next(iter(inputs.values())))
    outs = [model(**{k: v[i:i + batch] for k, v in inputs.items()}) for i in range(0, n, batch)]
    return {k: torch.cat([o[k] for o in outs]) for k in ("masks", "objectness")}
