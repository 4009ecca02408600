"""Masked Token Optimization, a toy reading (Choi et al., "Emerging Property of Masked Token for Effective
Pre-training", ECCV 2024). No official code was available to us, and only the paper's abstract and secondary
summaries could be read, so this module is *MTO-inspired*; where it may differ from the paper is said below.

What the paper says (abstract and summaries): a masked token should have **data singularity** — it carries
no image data, so it should be distinct from (uncorrelated with) the visible tokens and should not confuse
their attention. Pretrained MIM models show a *heterogeneity* between masked and visible tokens (measured by
the authors with an entropy-based score); MTO enforces it from the start through **weight recalibration**
(the visible tokens' attention weights on masked tokens) and losses on the masked token (named L_spa, L_e and
L_r in the paper), which shortens pretraining by about half.

What this module implements, on ``companion.models.MAE`` in ``"simmim"`` mode (the learned ``enc_mask_token``
replaces removed patch embeddings inside the encoder):

* :func:`attention_to_masked` — the property as an attention measure: the share of attention that the
  *visible* queries ([CLS] included) put on *masked* keys, per image and layer, divided by the share a
  mask-blind (uniform) attention would give them (the masked keys' share of all keys). 1 = masked tokens are
  attended like any other token; 0 = visible tokens ignore them entirely.
* :func:`mask_token_correlation` — the property as an embedding measure: squared cosine similarity between
  the mask token and each visible patch embedding (before position embeddings), averaged per image.
  0 = the mask token is orthogonal to the data (singular); 1 = it looks like a data token.
* :class:`MTOObjective` — a ``loss_fn`` for ``companion.train.fit``: SimMIM's reconstruction loss plus
  ``recalibration_weight`` × the visible→masked attention share in the first ``layers`` blocks (our stand-in
  for the weight recalibration / sparsity term: it pushes those attention weights towards zero) plus
  ``singularity_weight`` × the mask-token correlation (our stand-in for the singularity term). With both
  weights 0 it is plain SimMIM, drawing the same masks from the same generator, so runs are paired.
* :func:`steps_to_target` — the first checkpoint whose value reaches a target (the paper's "epochs to reach
  the baseline's converged accuracy", counted in optimizer steps).

Where it may differ from the paper: the exact forms of L_spa, L_e and L_r and of the entropy heterogeneity
score are not reproduced; the recalibration here is a soft loss on the attention weights of the first blocks,
not a fixed re-weighting rule; no schedule on the loss weights.

Mask convention (as in ``companion.masks`` and ``companion.models.mae``): token masks are bool (N, L),
**True = visible**, False = masked. Attention maps are (N, heads, T, T) with T = 1 + L ([CLS] first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import masks, train
from ...models.mae import MAE


def attention_to_masked(attention: list[torch.Tensor], visible: torch.Tensor, relative: bool = True) -> torch.Tensor:
    """Attention share that visible queries put on masked keys: → (N, layers).

    attention: one (N, heads, T, T) map per block, T = 1 + L; visible (N, L) bool. The share is averaged over
    heads and over the visible queries ([CLS] counts as visible). With ``relative`` it is divided by the
    masked keys' share of all T keys (what uniform attention would give), so 1 means mask-blind.
    """
    masked_key = F.pad(~visible, (1, 0), value=False).to(attention[0].dtype)  # [N, T]
    visible_query = F.pad(visible, (1, 0), value=True).to(attention[0].dtype)  # [N, T]
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
    """``loss_fn(model, x, y)`` for ``train.fit``: SimMIM reconstruction + MTO-style terms (see module doc).

    Each call draws ``masks.token_ratio_mask`` at ``ratio`` from ``generator``; the same generator seed gives
    the same masks whatever the weights, so MTO and the plain baseline see identical batches and masks.
    Returns ``{"loss", "pretext", "attention", "correlation"}``; ``fit`` logs per step the reconstruction loss
    ("pretext", the quantity compared between runs), the relative visible→masked attention of the first
    ``layers`` blocks ("attention") and the mask-token correlation ("correlation") in ``History.metrics``.
    Checkpoints along training (e.g. a linear probe) are ``fit``'s ``checkpoints=``.
    """

    def __init__(self, ratio: float, generator: torch.Generator, layers: int = 1, recalibration_weight: float = 0.0,
                 singularity_weight: float = 0.0):
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        self.ratio, self.generator, self.layers = ratio, generator, layers
        self.recalibration_weight, self.singularity_weight = recalibration_weight, singularity_weight

    def __call__(self, model: MAE, x: torch.Tensor, y=None) -> dict[str, torch.Tensor]:
        if model.enc_mask_token is None:
            raise ValueError("MTOObjective needs an MAE in 'simmim' mode (a mask token in the encoder)")
        visible = masks.token_ratio_mask(len(x), model.num_patches, self.ratio, self.generator).to(x.device)
        enc = model.forward_encoder(x, visible, return_attention=True)
        pred = model.forward_decoder(enc.latent, enc.ids_restore)
        pretext = model.forward_loss(x, pred, visible)
        attention = attention_to_masked(enc.attention[:self.layers], visible).mean()
        correlation = mask_token_correlation(model, x, visible).mean()
        loss = pretext
        if self.recalibration_weight:
            loss = loss + self.recalibration_weight * attention
        if self.singularity_weight:
            loss = loss + self.singularity_weight * correlation
        return {"loss": loss, "pretext": pretext.detach(), "attention": attention.detach(),
                "correlation": correlation.detach()}


@torch.no_grad()
def measure(model: MAE, imgs: torch.Tensor, visible: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The masked-token property and the pretext loss of a trained model on held-out images, per image.

    → {"attention": (N, depth) relative visible→masked attention per block, "correlation": (N,) mask-token
    correlation, "pretext": (N,) reconstruction MSE on the masked patches}. Eval mode, no gradient, CPU output.
    """
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {"attention": [], "correlation": [], "pretext": []}
    for i in range(0, len(imgs), batch_size):
        x, v = imgs[i:i + batch_size].to(device), visible[i:i + batch_size].to(device)
        enc = model.forward_encoder(x, v, return_attention=True)
        per_patch = model.forward_loss(x, model.forward_decoder(enc.latent, enc.ids_restore), v, reduction="none")
        removed = (~v).to(per_patch.dtype)
        out["pretext"].append(((per_patch * removed).sum(1) / removed.sum(1).clamp(min=1)).cpu())
        out["attention"].append(attention_to_masked(enc.attention, v).cpu())
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


__all__ = ["MTOObjective", "attention_received", "attention_to_masked", "mask_token_correlation", "measure",
           "steps_to_target"]
