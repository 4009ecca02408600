"""Stretching Each Dollar (Sehwag et al., micro-budget diffusion): deferred patch masking for DiT training.

Masking 75 % of the patches of every training image cuts a DiT's training cost about fourfold, but dropping them
*before* the backbone ("naive" masking) leaves each kept token blind to the rest of the image, and the model it
trains denoises full images badly. The paper *defers* the masking: a light **patch-mixer** (a few transformer
blocks) first runs over all patches, then 75 % of the tokens are dropped and only the kept ones go through the
backbone; the diffusion loss is computed **on the kept patches only**, and sampling never masks (official code
``SonyResearch/micro_diffusion``: ``models/dit.py`` ``mask_out_token`` / ``unmask_tokens``, ``models/model.py``
``edm_loss``: the per-patch loss times ``1 - mask``, averaged over the kept patches).

Here both variants are the package's one :class:`~companion.models.dit.DiT` (``mixer_depth=0`` = naive,
``mixer_depth > 0`` = deferred) trained with the shared Gaussian schedule and ε-prediction
(``companion.diffusion.gaussian``), not the paper's EDM preconditioning and log-normal σ sampling. The loss mask is
the per-patch keep mask upsampled to pixels (:func:`patch_loss_weight`) passed as ``diffusion_loss``'s ``weight``.

Shapes: N images (N, C, H, W) in the model's [-1, 1]; L tokens per image, K = L - round(ratio·L) kept.
"""

from __future__ import annotations

import torch

from ... import train
from ...diffusion.gaussian import Schedule, diffusion_loss
from ...masks.tokens import token_ratio_mask, token_to_pixel_mask
from ...models.dit import DiT, keep_index


def to_model(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] → the model's [-1, 1]."""
    return images * 2 - 1


def patch_loss_weight(visible: torch.Tensor, patch: int) -> torch.Tensor:
    """Token keep mask (N, L) bool → per-pixel loss weight (N, 1, H, W): L/K on kept patches, 0 on dropped ones.

    ``diffusion_loss`` averages ``weight · err`` over all elements, so this weight makes it the mean error over
    the kept patches only (the official code's ``(loss * unmask).sum() / unmask.sum()``, with K the same for
    every image).
    """
    frac = visible.float().mean(1).view(-1, 1, 1, 1)
    return token_to_pixel_mask(visible, patch).float() / frac


class MaskedDiffusion(train.Objective):
    """The training loss of one arm: ε-MSE at a uniform random level, on the kept patches of a random token mask.

    Call it as ``train.fit``'s loss with images as inputs and captions as targets:
    ``objective(model, x0 (N, C, H, W) in [-1, 1], captions (N, S))``. ``ratio`` is the share of tokens dropped
    per image (exactly ``round(ratio·L)``, uniformly at random); ``ratio=0`` is plain unmasked training. The masks,
    levels and noise come from a generator seeded with ``seed``, so two arms with the same seed see the same
    draws step by step.
    """

    def __init__(self, sched: Schedule, ratio: float, seed: int):
        self.sched, self.ratio = sched, ratio
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, model: DiT, x0: torch.Tensor, captions: torch.Tensor):
        if self.ratio == 0:
            return diffusion_loss(model, x0, self.sched, captions, generator=self.gen)
        visible = token_ratio_mask(len(x0), model.num_tokens, self.ratio, self.gen).to(x0.device)
        keep = keep_index(visible)
        weight = patch_loss_weight(visible, model.cfg.patch_size).to(x0)
        return diffusion_loss(lambda x, t, c: model(x, t, c, keep=keep), x0, self.sched, captions, weight=weight,
                              generator=self.gen)


def equal_flop_steps(steps: int, flops_per_step: float, baseline_flops_per_step: float) -> int:
    """Steps the baseline takes to spend what ``steps`` steps of ``flops_per_step`` spend (rounded)."""
    return max(1, round(steps * flops_per_step / baseline_flops_per_step))


__all__ = ["MaskedDiffusion", "equal_flop_steps", "patch_loss_weight", "to_model"]
