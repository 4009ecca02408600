"""Land-cover mosaics: toy multispectral scenes with multi-label land-cover annotations.

A scene is a Voronoi partition of the image into a few tiles (2 to ``max_tiles`` random seed points, each pixel
belongs to its nearest seed); each tile gets one of 8 land-cover classes. A class is a **spectral signature**
(its mean value in each of 6 bands) times a **texture** (stripes of a class-specific orientation and frequency,
fine-grained speckle, or flat). The classes come in four pairs whose signatures nearly coincide, so within a
pair only the texture tells them apart (mean band values alone do not). Each scene then gets an illumination
gain, a per-band offset and sensor noise.

Labels, like land-cover products matched to satellite scenes: ``fractions`` (N, 8) = each class's share of the
scene's pixels, and ``labels`` = ``fractions >= threshold`` (multi-hot). Everything is drawn from ``seed``:
the same arguments give the same scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CLASSES = ("water", "wetland", "trees", "shrub", "crops", "grass", "built", "bare")
N_BANDS = 6

# mean value per band (6 bands) of each class; classes 2k and 2k + 1 share nearly the same signature
SIGNATURES = torch.tensor([
    [0.10, 0.12, 0.08, 0.05, 0.03, 0.02],  # water
    [0.12, 0.13, 0.09, 0.07, 0.04, 0.03],  # wetland
    [0.05, 0.09, 0.06, 0.45, 0.25, 0.12],  # trees
    [0.06, 0.10, 0.07, 0.42, 0.27, 0.14],  # shrub
    [0.08, 0.14, 0.10, 0.35, 0.30, 0.20],  # crops
    [0.09, 0.15, 0.11, 0.33, 0.31, 0.21],  # grass
    [0.20, 0.22, 0.24, 0.28, 0.32, 0.30],  # built
    [0.22, 0.23, 0.25, 0.27, 0.34, 0.31],  # bare
])
# texture of each class: (kind, orientation in radians, spatial frequency in cycles per pixel, amplitude)
TEXTURES = (
    ("flat", 0.0, 0.0, 0.0),
    ("stripes", 0.0, 0.25, 0.5),
    ("speckle", 0.0, 0.0, 0.5),
    ("stripes", math.pi / 4, 0.2, 0.5),
    ("stripes", math.pi / 2, 0.3, 0.5),
    ("speckle", 0.0, 0.0, 0.2),
    ("stripes", 0.0, 0.3, 0.6),
    ("flat", 0.0, 0.0, 0.0),
)


@dataclass
class Mosaics:
    images: torch.Tensor  # (N, 6, S, S) float32
    fractions: torch.Tensor  # (N, 8) float32: each class's share of the pixels, rows sum to 1
    labels: torch.Tensor  # (N, 8) float32 multi-hot: fractions >= threshold
    class_map: torch.Tensor  # (N, S, S) int64: the class of each pixel

    def __len__(self) -> int:
        return len(self.images)


def _textures(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(N, 8, S, S) multiplicative texture of every class at every pixel (a random phase per scene)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    out = torch.zeros(n, len(TEXTURES), size, size)
    for c, (kind, theta, freq, amp) in enumerate(TEXTURES):
        if kind == "stripes":
            phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
            wave = torch.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
            out[:, c] = amp * wave
        elif kind == "speckle":
            out[:, c] = amp * torch.randn(n, size, size, generator=g)
    return out


def make_mosaics(n: int, size: int = 16, max_tiles: int = 6, threshold: float = 0.1, noise: float = 0.02,
                 seed: int = 0) -> Mosaics:
    """``n`` land-cover mosaics of ``size`` x ``size`` pixels and 6 bands (see the module doc).

    Each scene has 2..``max_tiles`` Voronoi tiles with independently drawn classes (two tiles may share one);
    ``noise`` is the sensor noise's standard deviation; ``threshold`` turns area fractions into multi-hot labels.
    """
    if max_tiles < 2:
        raise ValueError(f"max_tiles must be at least 2, not {max_tiles}")
    g = torch.Generator().manual_seed(seed)
    n_classes = len(CLASSES)
    n_tiles = torch.randint(2, max_tiles + 1, (n,), generator=g)
    points = torch.rand(n, max_tiles, 2, generator=g) * size
    tile_class = torch.randint(0, n_classes, (n, max_tiles), generator=g)
    coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).float() + 0.5
    dist = ((coords[None, None] - points[:, :, None, None]) ** 2).sum(-1)  # (N, T, S, S)
    unused = torch.arange(max_tiles)[None] >= n_tiles[:, None]
    dist = dist.masked_fill(unused[:, :, None, None], float("inf"))
    tile = dist.argmin(1)  # (N, S, S)
    class_map = tile_class.gather(1, tile.flatten(1)).view(n, size, size)

    texture = _textures(n, size, g).gather(1, class_map[:, None]).squeeze(1)  # (N, S, S)
    spectra = SIGNATURES[class_map].permute(0, 3, 1, 2)  # (N, 6, S, S)
    gain = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    offset = 0.03 * torch.randn(n, N_BANDS, 1, 1, generator=g)
    images = gain * spectra * (1 + texture[:, None]) + offset
    images = images + noise * torch.randn(images.shape, generator=g)

    fractions = torch.nn.functional.one_hot(class_map.flatten(1), n_classes).float().mean(1)
    labels = (fractions >= threshold).float()
    return Mosaics(images.float(), fractions, labels, class_map)
