"""A camera-like noise model: Poisson–Gaussian sensor noise, spatially and channel-correlated.

Real sensor noise (SIDD, DND) is neither white nor Gaussian: shot noise grows with the signal, read noise adds a
floor, and demosaicking and the colour pipeline spread every pixel's noise over its neighbours and over the
three channels. :class:`CameraNoise` imitates that on clean RGB images ``x`` (N, 3, H, W) in [0, 1]:

1. **Poisson–Gaussian** per pixel and channel: ``gain · Poisson(x / gain) - x + read · ε`` (mean 0, variance
   ``gain · x + read²``);
2. **spatial correlation**: a 3×3 separable kernel ``outer(v, v)`` with ``v = (s, 1, s)`` (``s = spatial``;
   ``s = 0.5`` is the bilinear-demosaicking kernel, ``s = 0`` leaves the noise white), scaled to unit L2 norm so
   that it keeps the variance of locally constant noise; replicate padding;
3. **channel correlation**: every pixel's noise vector is multiplied by ``C = (1 - c) I + c J / 3`` (``c =
   channel``, J all ones) with rows scaled to unit norm, which again keeps the variance.

So where ``x`` is locally constant the noise has variance ``gain · x + read²``, correlation ``2s / (1 + 2s²)``
between horizontal (or vertical) neighbours and correlation ``(C Cᵀ)_ij`` between channels i ≠ j
(:meth:`CameraNoise.neighbour_correlation`, :meth:`CameraNoise.channel_correlation`). The same generator state
gives the same noise. The output is not clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CameraNoise:
    """Poisson–Gaussian noise with 3×3 spatial and 3×3 channel correlation (see the module doc)."""

    gain: float = 0.01  # shot noise: variance gain · x
    read: float = 0.02  # read noise: standard deviation of the Gaussian floor
    spatial: float = 0.5  # off-centre weight s of the separable kernel outer((s, 1, s), (s, 1, s))
    channel: float = 0.5  # share c of the channel mixing (1 - c) I + c J / 3

    def __post_init__(self):
        if self.gain < 0 or self.read < 0 or not 0 <= self.spatial <= 1 or not 0 <= self.channel <= 1:
            raise ValueError(f"invalid camera noise {self}")

    def kernel(self) -> torch.Tensor:
        """(3, 3) spatial kernel of unit L2 norm."""
        v = torch.tensor([self.spatial, 1.0, self.spatial])
        k = torch.outer(v, v)
        return k / k.norm()

    def mixing(self) -> torch.Tensor:
        """(3, 3) channel mixing matrix C with unit-norm rows."""
        c = (1 - self.channel) * torch.eye(3) + self.channel * torch.full((3, 3), 1 / 3)
        return c / c.norm(dim=1, keepdim=True)

    def neighbour_correlation(self) -> float:
        """Correlation of the noise of two horizontally (or vertically) adjacent pixels, flat image."""
        s = self.spatial
        return 2 * s / (1 + 2 * s * s)

    def channel_correlation(self) -> torch.Tensor:
        """(3, 3) correlation matrix of the noise across channels at one pixel (C Cᵀ)."""
        c = self.mixing()
        return c @ c.T

    def variance(self, x: torch.Tensor) -> torch.Tensor:
        """Per-element variance ``gain · x + read²`` where ``x`` is locally constant (same shape as ``x``)."""
        return self.gain * x + self.read ** 2

    def white(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The uncorrelated Poisson–Gaussian noise (step 1 only), same shape as ``x`` (N, C, H, W)."""
        x = x.clamp(min=0)
        shot = (self.gain * torch.poisson(x / self.gain, generator=generator) - x) if self.gain > 0 else 0 * x
        return shot + self.read * torch.randn(x.shape, generator=generator, dtype=x.dtype)

    def correlate(self, n: torch.Tensor) -> torch.Tensor:
        """Steps 2 and 3 on white noise ``n`` (N, 3, H, W): the spatial kernel per channel, then channel mixing."""
        k = self.kernel().to(n)[None, None].expand(n.shape[1], 1, 3, 3)
        n = F.conv2d(F.pad(n, (1, 1, 1, 1), mode="replicate"), k, groups=n.shape[1])
        return torch.einsum("ij,njhw->nihw", self.mixing().to(n), n)

    def noise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Camera noise for clean images ``x`` (N, 3, H, W) in [0, 1]: (N, 3, H, W), mean 0."""
        return self.correlate(self.white(x, generator))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The noisy image ``x + noise(x)`` (N, 3, H, W), not clipped."""
        return x + self.noise(x, generator)


__all__ = ["CameraNoise"]
