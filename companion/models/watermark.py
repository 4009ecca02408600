"""A HiDDeN-style image watermarking network from the CNN's conv blocks, with a localisation head and a
differentiable distortion layer.

- :class:`WatermarkEncoder`: conv blocks on the image, the message (bits as ±1) mapped to a learned tile repeated
  over the image and concatenated with the features and the image, one more block and a 1×1 conv → a residual.
  The residual is rescaled per image to a fixed PSNR (:func:`scale_to_psnr`), so every watermarked image is
  exactly as visible whatever the network learned: two networks compared at equal PSNR.
- :class:`WatermarkDecoder`: conv blocks, a conv to one channel per bit, pooling aligned with the encoder's tile
  and a linear layer → bit logits (bit = logit > 0).
- :class:`Localiser`: conv blocks and a 1×1 conv → per-pixel "is watermarked" logits.
- :class:`Distortion`: identity, Gaussian noise, Gaussian blur, a differentiable JPEG approximation and resizing,
  each with a strength whose zero is the identity; in training one kind and strength is drawn per minibatch.

Images are (N, 3, H, W) in [0, 1]; messages are (N, bits) in {0, 1}.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cnn import _init_weights, conv_bn_relu

KINDS = ("identity", "noise", "blur", "jpeg", "resize")

# The JPEG standard's luminance quantisation table (quality 50), for 8×8 DCT blocks of 0..255 images.
JPEG_TABLE = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images (N, C, H, W) with peak 1 → (N,)."""
    mse = (a - b).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-12))


def scale_to_psnr(residual: torch.Tensor, target_psnr: float) -> torch.Tensor:
    """The residual (N, C, H, W) rescaled per image so that ``x + residual`` has PSNR ``target_psnr`` against x."""
    mse = residual.pow(2).flatten(1).mean(1).clamp_min(1e-12)
    scale = torch.sqrt(10 ** (-target_psnr / 10) / mse)
    return residual * scale.view(-1, *[1] * (residual.dim() - 1))


def _blocks(in_channels: int, channels: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*[conv_bn_relu(in_channels if i == 0 else channels, channels) for i in range(depth)])


class WatermarkEncoder(nn.Module):
    """(image (N,3,H,W), message (N,bits)) → watermarked image at PSNR ``target_psnr``.

    HiDDeN's encoder (conv blocks on the image; message, features and image concatenated; one more block; a 1×1
    conv to the residual), with the message first mapped by a linear layer to a ``tile``×``tile`` map of
    ``channels`` channels repeated over the image (the message processor of MaskMark and MBRS, tiled here so that
    every region of the image carries every bit). H and W must be multiples of ``tile``.
    """

    def __init__(self, bits: int = 16, channels: int = 32, depth: int = 3, target_psnr: float = 30.0, tile: int = 4):
        super().__init__()
        self.bits, self.target_psnr, self.tile, self.channels = bits, target_psnr, tile, channels
        self.message = nn.Linear(bits, channels * tile * tile)
        self.features = _blocks(3, channels, depth)
        self.fuse = conv_bn_relu(2 * channels + 3, channels)
        self.out = nn.Conv2d(channels, 3, 1)
        _init_weights(self)

    def message_map(self, message: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bits (N, bits) → (N, channels, H, W): the message's learned tile repeated over the image."""
        t = self.message(2 * message - 1).view(-1, self.channels, self.tile, self.tile)
        return t.repeat(1, 1, size[0] // self.tile, size[1] // self.tile)

    def residual(self, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        """The raw residual (N, 3, H, W), before rescaling to the target PSNR."""
        m = self.message_map(message.to(x.dtype), x.shape[2:])
        return self.out(self.fuse(torch.cat([self.features(x), m, x], 1)))

    def forward(self, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        return x + scale_to_psnr(self.residual(x, message), self.target_psnr)


class WatermarkDecoder(nn.Module):
    """(N, 3, H, W) image → (N, bits) bit logits: conv blocks, a 1×1 conv to one map per bit, pooling aligned with
    the encoder's tile (the mean over all tiles of each of the ``tile``×``tile`` positions) and a linear layer.

    HiDDeN pools globally; a tiled message under global pooling keeps only what survives rectification, which is
    learned slowly, while tile-aligned pooling is a matched filter from the first step. H and W must be
    multiples of ``tile``.
    """

    def __init__(self, bits: int = 16, channels: int = 32, depth: int = 3, tile: int = 4):
        super().__init__()
        self.tile = tile
        self.features = _blocks(3, channels, depth)
        self.to_bits = nn.Conv2d(channels, bits, 1)
        self.fc = nn.Linear(bits * tile * tile, bits)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.to_bits(self.features(x))
        n, b, h, w = m.shape
        t = self.tile
        pooled = m.view(n, b, h // t, t, w // t, t).mean(dim=(2, 4))
        return self.fc(pooled.flatten(1))


class Localiser(nn.Module):
    """(N, 3, H, W) image → (N, 1, H, W) logits that a pixel carries the watermark."""

    def __init__(self, channels: int = 32, depth: int = 3):
        super().__init__()
        self.features = _blocks(3, channels, depth)
        self.out = nn.Conv2d(channels, 1, 1)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def _dct_matrix(n: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n, n): coefficients = D @ block @ D.T."""
    k = torch.arange(n, dtype=torch.float32)
    d = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def jpeg_approx(x: torch.Tensor, strength: float) -> torch.Tensor:
    """A differentiable JPEG approximation of images (N, C, H, W) in [0, 1], H and W multiples of 8.

    Each channel's 8×8 blocks go through the DCT, are quantised with the standard luminance table times
    ``strength`` (1 ≈ quality 50) using the cubic rounding approximation round(z) + (z - round(z))³ (Shin & Song,
    2017) so gradients pass, and are transformed back. No colour conversion or chroma subsampling.
    ``strength`` 0 is the identity.
    """
    if strength == 0:
        return x
    n, c, h, w = x.shape
    d = _dct_matrix().to(x)
    q = (JPEG_TABLE.to(x) / 255.0) * strength
    blocks = x.reshape(n, c, h // 8, 8, w // 8, 8).transpose(3, 4)  # (n, c, H/8, W/8, 8, 8)
    z = d @ blocks @ d.T / q
    z = torch.round(z) + (z - torch.round(z)) ** 3
    out = d.T @ (z * q) @ d
    return out.transpose(3, 4).reshape(n, c, h, w)


def resize(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Bilinear down-scaling to (1 - ``strength``) of the side and back up to the original size; 0 is the identity."""
    h, w = x.shape[2:]
    small = (max(1, round(h * (1 - strength))), max(1, round(w * (1 - strength))))
    if small == (h, w):
        return x
    down = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)


class Distortion(nn.Module):
    """The distortion layer between encoder and decoder: ``apply(x, kind, strength)``, or, called on a
    minibatch, one kind drawn uniformly from ``kinds`` with a strength uniform in [0, ``max_strength[kind]``].

    Strengths: noise = std of additive Gaussian noise; blur = σ in pixels; jpeg = multiple of the quality-50
    table (:func:`jpeg_approx`); resize = share of the side removed (:func:`resize`). Every kind is the identity at
    strength 0 and differentiable in x. ``blur`` is the package's blur (``companion.masking.gaussian_blur``),
    passed in because models sit below ``masking`` in the package's layers.
    """

    def __init__(self, blur: Callable[[torch.Tensor, float], torch.Tensor], kinds: tuple[str, ...] = KINDS,
                 max_strength: dict[str, float] | None = None):
        super().__init__()
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown distortions {sorted(unknown)}; choose from {', '.join(KINDS)}")
        self.blur, self.kinds = blur, tuple(kinds)
        self.max_strength = {"identity": 0.0, "noise": 0.05, "blur": 1.0, "jpeg": 1.0, "resize": 0.5,
                             **(max_strength or {})}

    def apply(self, x: torch.Tensor, kind: str, strength: float, generator: torch.Generator | None = None):
        """Images (N, C, H, W) distorted by ``kind`` at ``strength`` (noise drawn from ``generator``)."""
        if kind == "identity" or strength == 0:
            return x
        if kind == "noise":
            return x + strength * torch.randn(x.shape, generator=generator).to(x)
        if kind == "blur":
            return self.blur(x, strength)
        if kind == "jpeg":
            return jpeg_approx(x, strength)
        if kind == "resize":
            return resize(x, strength)
        raise ValueError(f"unknown distortion {kind!r}; choose from {', '.join(KINDS)}")

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        kind = self.kinds[int(torch.randint(len(self.kinds), (), generator=generator))]
        strength = float(torch.rand((), generator=generator)) * self.max_strength[kind]
        return self.apply(x, kind, strength, generator)
