"""Datasets with ground truth: synthetic shape scenes and Fashion-MNIST.

Every image set is an :class:`ImageSet`: ``images`` (N,C,H,W) float in [0, 1], ``labels`` (N,) int64,
``masks`` (N,1,H,W) bool — True on the object (ground-truth evidence), ``class_names``.
Fashion-MNIST is prepared by ``data_scripts/`` (see :mod:`companion.data.files`).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .files import _fashion_dir, fashion_mnist_file, require, verify_fashion_mnist

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    masks: torch.Tensor  # (N, 1, H, W) bool, True on the object
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx) -> ImageSet:
        return ImageSet(self.images[idx], self.labels[idx], self.masks[idx], self.class_names)

    def split(self, n_first: int) -> tuple[ImageSet, ImageSet]:
        return self[:n_first], self[n_first:]


# ----------------------------------------------------------------------------------------------------
# synthetic shapes


def _shape_masks(kind: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Silhouettes for class indices ``kind`` (N,), offsets dx, dy (N,H,W) from the centre, radius r (N,1,1)."""
    ax, ay = np.abs(dx), np.abs(dy)
    circle = dx**2 + dy**2 <= r**2
    square = np.maximum(ax, ay) <= 0.8 * r
    triangle = (dy >= -r) & (dy <= 0.7 * r) & (ax <= 0.6 * (dy + r))
    cross = ((ax <= 0.33 * r) & (ay <= r)) | ((ay <= 0.33 * r) & (ax <= r))
    table = np.stack([circle, square, triangle, cross])  # (4, N, H, W)
    return table[kind, np.arange(len(kind))]


def make_shapes(n: int, size: int = 32, background: str = "varied", seed: int = 0) -> ImageSet:
    """``n`` RGB scenes of one shape (circle, square, triangle, cross) on a background.

    ``background="varied"``: brightness uniform in [0.1, 0.8], a colour tint and a random grating
    texture, so neither black nor grey is typical of the training data. ``"dark"``: near-black
    backgrounds (0–0.08), where black filling is nearly in-distribution. Objects have radius 20–35 %
    of the image, a random position fully inside it, and a colour at least 0.3 away in brightness from
    the background. Deterministic in ``seed``.
    """
    if background not in ("varied", "dark"):
        raise ValueError(f"background must be 'varied' or 'dark', not {background!r}")
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, len(SHAPE_CLASSES), n)
    r = rng.uniform(0.2, 0.35, n) * size
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
    obj = _shape_masks(kind, dx, dy, r[:, None, None])

    if background == "varied":
        base = rng.uniform(0.1, 0.8, n)
        tint = rng.uniform(0.85, 1.15, (n, 3))
        freq, phase, angle = rng.uniform(0.15, 0.6, n), rng.uniform(0, 2 * np.pi, n), rng.uniform(0, np.pi, n)
        wave = np.sin(freq[:, None, None] * (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy)
                      + phase[:, None, None])
        texture = rng.uniform(0.03, 0.12, n)[:, None, None] * wave
    else:
        base = rng.uniform(0.0, 0.08, n)
        tint = np.ones((n, 3))
        texture = np.zeros((n, size, size))
    bg = base[:, None, None, None] * tint[:, :, None, None] + texture[:, None]
    # object brightness at least 0.3 away from the background's
    lo_ok, hi_ok = base - 0.3, base + 0.3
    up = (rng.random(n) < 0.5) & (hi_ok <= 1.0) | (lo_ok < 0.0)
    level = np.where(up, rng.uniform(np.minimum(hi_ok, 1.0), 1.0), rng.uniform(0.0, np.maximum(lo_ok, 0.0)))
    colour = np.clip(level[:, None] * rng.uniform(0.8, 1.2, (n, 3)), 0, 1)
    img = np.where(obj[:, None], colour[:, :, None, None], bg)
    img = img + rng.normal(0, 0.02, img.shape)
    return ImageSet(torch.from_numpy(np.clip(img, 0, 1).astype(np.float32)), torch.from_numpy(kind.astype(np.int64)),
                    torch.from_numpy(obj[:, None]), SHAPE_CLASSES)


# ----------------------------------------------------------------------------------------------------
# Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally .gz): the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "train", n: int | None = None, data_dir: str = "", seed: int = 0,
                       threshold: float = 0.05) -> ImageSet:
    """Fashion-MNIST from idx files (Debian's ``dataset-fashion-mnist``, ``$COMPANION_DATA`` or ``data_dir``).

    Returns ``n`` images (a seeded random subset; all if None) as (N,1,28,28) floats; the object mask
    is the garment's silhouette (pixels brighter than ``threshold``) — backgrounds are uniformly black.
    The files are checked against their published checksums on first use; a missing, truncated or damaged
    file raises :class:`~companion.data.DataError` (one line naming the file and the command that prepares it).
    """
    d = _fashion_dir(data_dir)
    if d is None:
        require("fashion_mnist", data_dir)
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    verify_fashion_mnist(d, stems)
    images, labels = (_read_idx(fashion_mnist_file(d, stem)) for stem in stems)
    idx = np.arange(len(labels)) if n is None else np.random.default_rng(seed).permutation(len(labels))[:n]
    x = torch.from_numpy(images[idx].astype(np.float32) / 255.0)[:, None]
    return ImageSet(x, torch.from_numpy(labels[idx].astype(np.int64)), x > threshold, FASHION_CLASSES)
