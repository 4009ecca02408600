"""Text-guided masking for video MAE (Fan et al., "Text-Guided Video Masked Autoencoder", ECCV 2024).

Two ideas, both on one model (``companion.models.video_mae.VideoText``: a ``VideoMAE`` plus a small caption
encoder and a projection into a shared video–text space):

* **Text-guided masking (TGM).** Score every tube token by the cosine similarity between its features and
  the clip's caption in a video–text embedding space (the paper: CLIP patch features vs the BLIP caption),
  then remove the best-matching tubes (``companion.masks.hard_patch_mask`` with the scores: the top-scoring
  share of the removed tubes, the rest at random). Here the embedding space is a tiny ``VideoText`` trained
  contrastively with a max-over-tubes similarity (so that single tubes, not just the clip, align with the
  caption) — our stand-in for CLIP, a frozen zoo model (``companion.zoo.tgm_video_aligner``).
* **MAE + masked video–text contrastive (VTC).** The MAE loss on the removed tubes plus a symmetric InfoNCE
  between the mean of the *visible* tokens' embeddings and the caption embedding.

The comparisons continue one zoo warm start (``companion.zoo.tgm_video_warm_start``) for equal steps under
each masking (``continue_pretraining``): the same batches, the same random draws, only the scores differ.
Captions are word ids from ``companion.data.video`` (colour and shape of the captioned object).
"""

from __future__ import annotations

import torch

from ... import masks, mim, train, zoo
from ...models.video_mae import VideoMAE, VideoText, info_nce

__all__ = ["VideoMAE", "VideoText", "info_nce", "pretrain", "aligner", "continue_pretraining", "top_k_capture",
           "time_pooled_features"]

aligner = zoo.video_text_aligner  # the frozen video–text aligner (cached), as the notebook and the zoo build it


def pretrain(model: VideoText, clips: torch.Tensor, captions: torch.Tensor, steps: int, mask_fn=None,
             recon_weight: float = 1.0, vtc_weight: float = 0.0, pool: str = "mean", seed: int = 0,
             **fit_kwargs) -> list[float]:
    """Train ``model`` with ``VideoText.loss`` for ``steps`` steps; ``mask_fn(n, generator)`` draws the token
    masks (None: every tube visible). Batches and masks are seeded by ``seed`` as in ``companion.mim.pretrain``,
    so runs with the same seed are paired. ``fit_kwargs`` go to ``companion.train.fit``."""
    g = torch.Generator().manual_seed(seed + 1)

    def loss_fn(m, x, c):
        mask = None if mask_fn is None else mask_fn(len(x), g).to(x.device)
        return m.loss(x, c, mask, recon_weight=recon_weight, vtc_weight=vtc_weight, pool=pool)

    return train.fit(model, clips, captions, steps, seed=seed, loss_fn=loss_fn, **fit_kwargs)


def continue_pretraining(model: VideoText, clips: torch.Tensor, captions: torch.Tensor, steps: int,
                         scores: torch.Tensor | None = None, ratio: float = 0.75, guided_fraction: float = 1.0,
                         vtc_weight: float = 0.0, seed: int = 0, **fit_kwargs) -> list[float]:
    """Continue training ``model`` on ``clips`` [N, C, T, H, W] / ``captions`` [N, W] for ``steps`` steps with
    the MAE loss (+ ``vtc_weight`` · masked video–text InfoNCE), each clip masked by its own ``scores`` [N, L]:
    of the ``round(ratio·L)`` removed tubes, the ``guided_fraction`` share with the highest scores, the rest
    at random (``masks.hard_patch_mask``). ``scores=None`` is random tube masking (VideoMAE).

    Batches come from ``train.fit`` seeded with ``seed`` and the random part of every mask from a generator
    seeded ``seed + 1``, so arms that differ only in ``scores`` see the same clips and the same random draws.
    Returns the ``train.History``."""
    g = torch.Generator().manual_seed(seed + 1)
    index = torch.arange(len(clips))

    def loss_fn(m, x, i):
        i = i.cpu()
        if scores is None:
            visible = masks.hard_patch_mask(torch.zeros(len(i), m.mae.num_patches), ratio, 0.0, g)
        else:
            visible = masks.hard_patch_mask(scores[i], ratio, guided_fraction, g)
        return m.loss(x, captions[i].to(x.device), visible.to(x.device), vtc_weight=vtc_weight)

    return train.fit(model, clips, index, steps, seed=seed, loss_fn=loss_fn, **fit_kwargs)


def top_k_capture(scores: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    """Share of ``weights`` [N, L] ≥ 0 (a tube's share of the captioned object) that lies on the ``k``
    highest-``scores`` [N, L] tubes of each clip, (N,): how much of the object a guided mask of ``k`` tubes
    finds, without the random tubes that fill a mask up to its ratio. Ties are broken by tube order."""
    if not 0 < k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}], got {k}")
    top = torch.zeros_like(weights, dtype=torch.bool).scatter_(1, scores.topk(k, dim=1).indices, True)
    return (weights * top).sum(1) / weights.sum(1).clamp(min=1e-8)


def time_pooled_features(model: VideoMAE, clips: torch.Tensor) -> torch.Tensor:
    """Frozen encoder features of unmasked clips [N, C, T, H, W], mean-pooled over space but not over time:
    [N, T/tubelet · D], the tube layers in order (mean pooling over every token would leave a linear probe no
    way to tell which tube layer came first, and so no way to read a direction of motion)."""
    tokens = mim.encoder_features(model, clips, pool="none")  # [N, L, D]
    return tokens.reshape(len(tokens), model.time_grid, -1, tokens.shape[-1]).mean(2).flatten(1)
