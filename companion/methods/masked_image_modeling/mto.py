"""Masked Token Optimization (Choi et al., "Emerging Property of Masked Token for Effective Pre-training",
ECCV 2024; arXiv 2404.08330), on ``companion.models.MAE`` in ``"simmim"`` mode (a learned mask token replaces
the removed patch embeddings *inside* the encoder).

What the paper says (its abstract, keywords and first page, the parts of the text we could read): a masked token
should have three properties — spatial randomness, substitutional consistency and **data singularity**
(renamed "data distinctiveness" in a later version): it carries no image data, so it should stay distinct from
the visible tokens and should not take part in their attention. Pretrained MIM models show a *heterogeneity*
between masked and visible tokens, measured with an **entropy**-based score; MTO enforces it from the start of
pre-training through **weight recalibration** and losses on the masked tokens (named L_spa, L_e, L_r), and
reaches the baseline's converged accuracy in about half the epochs (measured by RAUC, the area under the
accuracy-versus-epoch curve). The equations of the method section were not reachable from this project's
sources, so the forms below are our reading of those words, stated one by one:

* :func:`attention_entropy` / :func:`heterogeneity` — the score: the Shannon entropy of each query token's
  attention distribution (normalised by log T, so 1 = uniform), averaged separately over the masked and the
  visible queries of an image; the heterogeneity is their absolute gap, per image and block.
* :func:`recalibrate` — weight recalibration: in the first ``layers`` blocks, the attention weights that visible
  queries ([CLS] included) put on masked keys are set to zero and each such row is renormalised, so visible
  tokens are computed from visible tokens only; the masked queries' rows are left as they are.
* :func:`attention_to_masked` — the sparsity term (our reading of L_spa): the share of attention visible
  queries put on masked keys, relative to a mask-blind (uniform) share, measured on the attention the block
  computed *before* recalibration, so the weights themselves learn what the recalibration imposes.
* :func:`mask_token_correlation` — the singularity term: squared cosine between the mask token and each visible
  patch embedding (0 = orthogonal to the data).
* :class:`MTOObjective` — a ``loss_fn`` for ``companion.train.fit``: SimMIM's reconstruction loss, with MTO on,
  under recalibration of the first ``layers`` blocks, plus ``sparsity_weight`` × the sparsity term plus
  ``singularity_weight`` × the singularity term. With MTO off it is plain SimMIM drawing the same masks from the
  same generator, so the two runs are paired step by step.
* :func:`steps_to_target` and :func:`steps_to_target_interval` — the efficiency claim: the first checkpoint at
  which a run reaches the baseline's final probe accuracy, and a bootstrap interval (over the test images) of
  the difference in steps between the two runs.

Mask convention (as in ``companion.masks`` and ``companion.models.mae``): token masks are bool (N, L),
**True = visible**, False = masked. Attention maps are (N, heads, T, T) with T = 1 + L ([CLS] first).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from ... import masks, train
from ...models.layers import attention_map_hook
from ...models.mae import MAE


def _keys_and_queries(visible: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """visible (N, L) → (masked_key (N, T), visible_query (N, T)) as floats, T = 1 + L, [CLS] visible."""
    return F.pad(~visible, (1, 0), value=False).to(dtype), F.pad(visible, (1, 0), value=True).to(dtype)


def attention_to_masked(attention: list[torch.Tensor], visible: torch.Tensor, relative: bool = True) -> torch.Tensor:
    """Attention share that visible queries put on masked keys: → (N, layers).

    attention: one (N, heads, T, T) map per block, T = 1 + L; visible (N, L) bool. The share is averaged over
    heads and over the visible queries ([CLS] counts as visible). With ``relative`` it is divided by the
    masked keys' share of all T keys (what uniform attention would give), so 1 means mask-blind.
    """
    masked_key, visible_query = _keys_and_queries(visible, attention[0].dtype)
    out = []
    for att in attention:
        mass = (att * masked_key[:, None, None, :]).sum(-1).mean(1)  # [N, T] per query, mean over heads
        out.append((mass * visible_query).sum(1) / visible_query.sum(1))  # [N]
    share = torch.stack(out, dim=1)  # [N, layers]
    if relative:
        share = share / (masked_key.mean(1, keepdim=True)).clamp(min=1e-12)
    return share


def attention_received(attention: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Attention each patch key receives from the visible queries ([CLS] included) of one block, averaged
    over heads and those queries: attention (N, heads, T, T), visible (N, L) → (N, L) (sums to at most 1)."""
    visible_query = F.pad(visible, (1, 0), value=True).to(attention.dtype)  # [N, T]
    per_key = (attention.mean(1) * visible_query[:, :, None]).sum(1) / visible_query.sum(1, keepdim=True)
    return per_key[:, 1:]  # drop the [CLS] key: [N, L]


def attention_entropy(attention: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised entropy of each query's attention, averaged over heads and over the masked / visible queries.

    attention (N, heads, T, T), visible (N, L) → (masked (N,), visible (N,)), each in [0, 1]: 1 = the query
    attends uniformly to all T keys, 0 = to one key. [CLS] counts as a visible query. An image without masked
    patches gets NaN for the masked queries.
    """
    t = attention.shape[-1]
    ent = -(attention * attention.clamp(min=1e-12).log()).sum(-1).mean(1) / math.log(t)  # [N, T]
    _, visible_query = _keys_and_queries(visible, attention.dtype)
    masked_query = 1 - visible_query
    return ((ent * masked_query).sum(1) / masked_query.sum(1),
            (ent * visible_query).sum(1) / visible_query.sum(1))


def heterogeneity(attention: list[torch.Tensor], visible: torch.Tensor) -> torch.Tensor:
    """The entropy-based heterogeneity score per image and block: |H(masked queries) − H(visible queries)| with H
    from :func:`attention_entropy`. attention: one (N, heads, T, T) map per block → (N, blocks)."""
    return torch.stack([(m - v).abs() for m, v in (attention_entropy(a, visible) for a in attention)], dim=1)


def recalibrate(attention: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Weight recalibration of one block's attention (N, heads, T, T): the weights that visible queries ([CLS]
    included) give masked keys become 0 and those rows are renormalised to sum to 1; masked queries' rows are
    unchanged. Differentiable; an identity when every patch is visible."""
    masked_key, visible_query = _keys_and_queries(visible, attention.dtype)
    drop = visible_query[:, None, :, None] * masked_key[:, None, None, :]  # [N, 1, T, T]: visible q → masked k
    kept = attention * (1 - drop)
    return kept / kept.sum(-1, keepdim=True).clamp(min=1e-12)


@contextmanager
def recalibrated(model: MAE, visible: torch.Tensor, layers: int, raw: list | None = None):
    """Inside the context, the first ``layers`` encoder blocks of ``model`` use :func:`recalibrate`d attention
    for the mask ``visible`` (N, L); ``raw``, if given, collects those blocks' maps *before* recalibration."""
    targets = {id(blk.attn): i for i, blk in enumerate(model.blocks) if i < layers}

    def fn(module, att):
        if id(module) not in targets:
            return None
        if raw is not None:
            raw.append(att)
        return recalibrate(att, visible)

    with attention_map_hook(model, fn):
        yield model


def mask_token_correlation(model: MAE, imgs: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine similarity between the encoder's mask token and each visible patch embedding
    (patch embedding only, no position embedding): imgs (N, C, H, W), visible (N, L) → (N,). Differentiable."""
    if model.enc_mask_token is None:
        raise ValueError("mask_token_correlation needs an MAE in 'simmim' mode (a mask token in the encoder)")
    patches = model.patch_embed(imgs)  # [N, L, D]
    cos = F.cosine_similarity(patches, model.enc_mask_token.to(patches.dtype), dim=-1)  # [N, L]
    keep = visible.to(cos.dtype)
    return (cos**2 * keep).sum(1) / keep.sum(1).clamp(min=1)


class MTOObjective(train.Objective):
    """``loss_fn(model, x, y)`` for ``train.fit``: SimMIM reconstruction, with MTO its terms (see module doc).

    Each call draws ``masks.token_ratio_mask`` at ``ratio`` from ``generator``; the same generator seed gives the
    same masks whatever the settings, so MTO and plain SimMIM see identical batches and masks. ``mto=False``
    is plain SimMIM (no recalibration, no extra terms). Returns ``{"loss", "pretext", "attention",
    "correlation"}``; ``fit`` logs per step the reconstruction loss ("pretext"), the relative visible→masked
    attention of the first ``layers`` blocks before any recalibration ("attention") and the mask-token
    correlation ("correlation") in ``History.metrics``.
    """

    def __init__(self, ratio: float, generator: torch.Generator, layers: int = 1, mto: bool = False,
                 sparsity_weight: float = 0.0, singularity_weight: float = 0.0):
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        self.ratio, self.generator, self.layers, self.mto = ratio, generator, layers, mto
        self.sparsity_weight, self.singularity_weight = sparsity_weight, singularity_weight

    def __call__(self, model: MAE, x: torch.Tensor, y=None) -> dict[str, torch.Tensor]:
        if model.enc_mask_token is None:
            raise ValueError("MTOObjective needs an MAE in 'simmim' mode (a mask token in the encoder)")
        visible = masks.token_ratio_mask(len(x), model.num_patches, self.ratio, self.generator).to(x.device)
        if self.mto:
            raw: list[torch.Tensor] = []
            with recalibrated(model, visible, self.layers, raw):
                enc = model.forward_encoder(x, visible)
            maps = raw
        else:
            enc = model.forward_encoder(x, visible, return_attention=True)
            maps = enc.attention[:self.layers]
        pretext = model.forward_loss(x, model.forward_decoder(enc.latent, enc.ids_restore), visible)
        attention = attention_to_masked(maps, visible).mean()
        correlation = mask_token_correlation(model, x, visible).mean()
        loss = pretext
        if self.mto and self.sparsity_weight:
            loss = loss + self.sparsity_weight * attention
        if self.mto and self.singularity_weight:
            loss = loss + self.singularity_weight * correlation
        return {"loss": loss, "pretext": pretext.detach(), "attention": attention.detach(),
                "correlation": correlation.detach()}


@torch.no_grad()
def measure(model: MAE, imgs: torch.Tensor, visible: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The masked-token properties and the pretext loss of a model on held-out images, per image (no
    recalibration: what the weights themselves do).

    → {"attention": (N, depth) relative visible→masked attention per block, "heterogeneity": (N, depth) entropy
    gap per block, "correlation": (N,) mask-token correlation, "pretext": (N,) reconstruction MSE on the masked
    patches}. Eval mode, no gradient, CPU output.
    """
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {"attention": [], "heterogeneity": [], "correlation": [], "pretext": []}
    for i in range(0, len(imgs), batch_size):
        x, v = imgs[i:i + batch_size].to(device), visible[i:i + batch_size].to(device)
        enc = model.forward_encoder(x, v, return_attention=True)
        per_patch = model.forward_loss(x, model.forward_decoder(enc.latent, enc.ids_restore), v, reduction="none")
        removed = (~v).to(per_patch.dtype)
        out["pretext"].append(((per_patch * removed).sum(1) / removed.sum(1).clamp(min=1)).cpu())
        out["attention"].append(attention_to_masked(enc.attention, v).cpu())
        out["heterogeneity"].append(heterogeneity(enc.attention, v).cpu())
        out["correlation"].append(mask_token_correlation(model, x, v).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def steps_to_target(steps: list[int], values: list[float], target: float, higher: bool = True,
                    not_reached: float | None = None) -> float | None:
    """First step whose value reaches ``target`` (``>=`` if ``higher``, else ``<=``); ``not_reached`` if none."""
    if len(steps) != len(values):
        raise ValueError(f"steps and values differ in length: {len(steps)} vs {len(values)}")
    for s, v in zip(steps, values):
        if (v >= target) if higher else (v <= target):
            return float(s)
    return not_reached


def steps_to_target_interval(steps: list[int], baseline: torch.Tensor, method: torch.Tensor,
                             resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """How many steps earlier the method reaches the baseline's final accuracy, with a bootstrap over test items.

    baseline, method: (checkpoints, N) per-item correctness (or scores) at ``steps``, the same N test items in
    both. Target = the baseline's mean at its last checkpoint; each run's steps = the first checkpoint whose mean
    reaches it (a run that never does counts one checkpoint interval past the end). Returns {"target",
    "baseline_steps", "method_steps", "low", "high"} where low/high bound the 95 % percentile interval of
    method_steps − baseline_steps over ``resamples`` resamples of the test items (deterministic in ``seed``).
    """
    b, m = np.asarray(baseline, dtype=float), np.asarray(method, dtype=float)
    if b.shape != m.shape or b.shape[0] != len(steps):
        raise ValueError(f"baseline {b.shape} and method {m.shape} must both be (len(steps)={len(steps)}, N)")
    past = float(steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1))
    s = np.asarray(steps, dtype=float)

    def first(curves: np.ndarray, target: np.ndarray) -> np.ndarray:  # curves [R, C], target [R] → [R]
        reached = curves >= target[:, None] - 1e-12
        return np.where(reached.any(1), s[reached.argmax(1)], past)

    idx = np.random.default_rng(seed).integers(0, b.shape[1], size=(resamples, b.shape[1]))  # [R, N]
    cb, cm = b[:, idx].mean(-1).T, m[:, idx].mean(-1).T  # [R, C]
    diff = first(cm, cb[:, -1]) - first(cb, cb[:, -1])
    target = b[-1].mean(keepdims=True)
    return {"target": float(target[0]), "baseline_steps": float(first(b.mean(1)[None], target)[0]),
            "method_steps": float(first(m.mean(1)[None], target)[0]),
            "low": float(np.percentile(diff, 2.5)), "high": float(np.percentile(diff, 97.5))}


__all__ = ["MTOObjective", "attention_entropy", "attention_received", "attention_to_masked", "heterogeneity",
           "mask_token_correlation", "measure", "recalibrate", "recalibrated", "steps_to_target",
           "steps_to_target_interval"]
