"""MID — Mask, Inpaint and Denoise (Chihaoui & Favaro, "Unsupervised real-world denoising: sparsity is all you
need", 2025), at toy scale.

A denoiser is trained on *synthetic* pairs (clean ``x``, ``x + n`` with ``n`` from a noise sampler) and applied to
*real* noisy images whose noise it never saw. MID sparsifies the input: a random share ``mask_ratio`` of the pixels
is dropped (set to 0) and the network predicts the whole clean image, so it learns to inpaint the dropped pixels and
denoise the kept ones; at test time the real noisy image is masked the same way and the predictions of several
masks are averaged. The paper's intuition: a sparse input hides much of what tells synthetic noise from real noise,
while an inpainter trained with supervision still reconstructs the image from the pixels left. Then the noise
sampler is refitted: the residuals ``y_real - f(y_real)`` of the current denoiser on the (unpaired) real noisy
images form a noise set, training draws noise from that set instead of from the Gaussian, and the denoiser
continues from its weights (one "iteration"); a better denoiser gives cleaner residuals, hence a better sampler.

- :class:`Denoiser` — the package UNet (no time embedding) with an input skip;
- :class:`GaussianSampler`, :class:`ResidualSampler` — noise samplers, ``sampler(x, generator) -> noise``;
  :class:`~companion.data.camera.CameraNoise` has the same call form (``.noise``) for an oracle;
- :class:`DenoiseObjective` — the training loss for ``train.fit`` (MSE of ``f(M ⊙ (x + n))`` to ``x`` over all
  pixels; ``mask_ratio = 0`` is plain supervised denoising);
- :func:`denoise` — inference (mean over ``n_masks`` random masks), :func:`residuals` — the refit's noise set;
- :func:`noise_spectrum` — the radial power spectrum of noise images (for comparing samplers with the real noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ... import masks as masklib
from ... import train
from ...masks.pixel import pixel_sparse
from ...models.unet import UNet


@dataclass(frozen=True)
class GaussianSampler:
    """White Gaussian noise of standard deviation ``sigma`` (MID's initial sampler)."""

    sigma: float

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)


class ResidualSampler:
    """Noise drawn from a finite noise set ``bank`` (M, C, H', W'): per image a random member, a random window
    of the images' size (H ≤ H', W ≤ W') and random left-right and up-down flips (noise statistics are assumed
    shift- and flip-invariant)."""

    def __init__(self, bank: torch.Tensor):
        self.bank = bank.detach().float()

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        (c, h, w), (bc, bh, bw) = x.shape[1:], self.bank.shape[1:]
        if c != bc or h > bh or w > bw:
            raise ValueError(f"noise set members {(bc, bh, bw)} cannot cover images {(c, h, w)}")
        idx = torch.randint(0, len(self.bank), (len(x),), generator=generator)
        top = torch.randint(0, bh - h + 1, (len(x),), generator=generator)
        left = torch.randint(0, bw - w + 1, (len(x),), generator=generator)
        flips = torch.rand(len(x), 2, generator=generator) < 0.5
        n = torch.stack([self.bank[i, :, t:t + h, j:j + w] for i, t, j in zip(idx, top, left)])
        n[flips[:, 0]] = n[flips[:, 0]].flip(-1)
        n[flips[:, 1]] = n[flips[:, 1]].flip(-2)
        return n.to(x)


class Denoiser(nn.Module):
    """The package's two-level UNet (no time embedding) with an input skip, DnCNN-style residual learning:
    ``y + unet(y)`` for images (N, 3, H, W), H and W even. Masked inputs (dropped pixels are 0) go through the
    same network."""

    def __init__(self, channels=(16, 32)):
        super().__init__()
        self.unet = UNet(3, channels=channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.unet(y)


class DenoiseObjective(train.Objective):
    """``train.fit`` loss: mean squared error of ``model(M ⊙ (x + n))`` to the clean batch ``x`` (N, C, H, W),
    over all pixels (MID: inpaint the dropped pixels and denoise the kept ones).

    ``n = sampler(x, noise_generator)``; ``M`` keeps ``1 - mask_ratio`` of the pixels (exact count per image,
    :func:`~companion.masks.pixel.pixel_sparse`); ``mask_ratio = 0`` gives plain supervised denoising. Noise and
    masks come from two generators seeded with ``seed`` and ``seed + 1``, so two objectives with the same seed
    and sampler draw the same noise whatever their mask ratio.
    """

    def __init__(self, sampler, mask_ratio: float = 0.0, seed: int = 0):
        self.sampler, self.mask_ratio = sampler, mask_ratio
        self.noise_gen = torch.Generator().manual_seed(seed)
        self.mask_gen = torch.Generator().manual_seed(seed + 1)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        noisy = x + self.sampler(x.cpu(), self.noise_gen).to(x)
        if self.mask_ratio > 0:
            noisy = noisy * pixel_sparse(len(x), x.shape[-2:], self.mask_ratio, self.mask_gen).to(x.device)
        return F.mse_loss(model(noisy), x)


@torch.no_grad()
def denoise(model: torch.nn.Module, y: torch.Tensor, mask_ratio: float = 0.0, n_masks: int = 1,
            generator: torch.Generator | None = None, batch_size: int = 64) -> torch.Tensor:
    """Denoised images (N, C, H, W): ``model(y)`` when ``mask_ratio = 0``, else the mean of ``model(M_k ⊙ y)``
    over ``n_masks`` random pixel-sparse masks per image (``n_masks`` forward passes per image)."""
    model.eval()
    if mask_ratio == 0:
        return train.predict(model, y, batch_size=batch_size)
    out = torch.zeros_like(y)
    for _ in range(n_masks):
        keep = pixel_sparse(len(y), y.shape[-2:], mask_ratio, generator)
        out += train.predict(model, y * keep, batch_size=batch_size)
    return out / n_masks


def residuals(model: torch.nn.Module, y: torch.Tensor, mask_ratio: float = 0.0, n_masks: int = 1,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """MID's noise set: real noisy images minus the denoiser's pseudo-clean prediction, (N, C, H, W)."""
    return y - denoise(model, y, mask_ratio, n_masks, generator)


def noise_spectrum(noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum of noise images (N, C, S, S), averaged over images and channels:
    (frequency in cycles per pixel [B], power [B]); each channel's mean is removed first."""
    return masklib.radial_power_spectrum(noise.reshape(-1, *noise.shape[-2:]))


__all__ = ["Denoiser", "GaussianSampler", "ResidualSampler", "DenoiseObjective", "denoise", "residuals",
           "noise_spectrum"]
