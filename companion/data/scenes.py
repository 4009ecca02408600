"""Captioned shape scenes for the text-to-image family: one or two coloured shapes on a near-plain background.

A scene names its objects from left to right in a four-word caption, ``colour shape [colour shape]``, padded
with ``<pad>`` (id 0) — the caption the zoo's ``toy_sd`` is trained on, and the prompt an editing notebook swaps
a word of. Backgrounds are a plain grey (brightness 0.3–0.7) with a little pixel noise, and object colours are
the four saturated ``COLOURS`` of :mod:`companion.data.video`, so objects are segmentable by colour
(:func:`segment`) and their colour is read back by the nearest palette colour (:func:`colour_index`).

Tensors: images (N, 3, H, W) float in [0, 1]; captions (N, 4) int64 ids into ``VOCAB``; objects (N, 2, H, W)
bool, slot k the k-th named object (an empty slot is all False; the right object is drawn over the left one);
colours / shapes (N, 2) int64 (-1 = no object); centres (N, 2, 2) (x, y) in pixels; radii (N, 2) in pixels;
background (N, 3). :func:`render` redraws scenes from these parameters (moved objects, changed colours: clips).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import words
from .images import SHAPE_CLASSES, _shape_masks
from .video import COLOURS

VOCAB = ("<pad>", *COLOURS, *SHAPE_CLASSES)
PAD = words.PAD
CAPTION_LEN = 4
PALETTE = torch.tensor(list(COLOURS.values()))  # (4, 3)


@dataclass
class Scenes:
    images: torch.Tensor  # (N, 3, H, W) float32 in [0, 1]
    captions: torch.Tensor  # (N, 4) int64
    objects: torch.Tensor  # (N, 2, H, W) bool
    colours: torch.Tensor  # (N, 2) int64, -1 = no object
    shapes: torch.Tensor  # (N, 2) int64, -1 = no object
    centres: torch.Tensor  # (N, 2, 2) float32, (x, y)
    radii: torch.Tensor  # (N, 2) float32
    background: torch.Tensor  # (N, 3) float32

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx) -> Scenes:
        return Scenes(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    def caption(self, i: int) -> str:
        return caption_text(self.captions[i])


def caption_ids(colours: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
    """(N, 2) colour and shape indices (-1 = none) → (N, 4) caption ids ``colour shape colour shape``."""
    n_col = len(COLOURS)
    words = torch.stack([colours + 1, shapes + 1 + n_col], dim=2).flatten(1)  # (N, 4)
    present = torch.stack([colours >= 0, shapes >= 0], dim=2).flatten(1)
    return torch.where(present, words, torch.full_like(words, PAD))


def caption_text(ids) -> str:
    return words.decode(ids, VOCAB)


def encode(texts: list[str]) -> torch.Tensor:
    """Captions ("red circle blue square") → (N, 4) ids, padded; an unknown word raises a ValueError."""
    return words.encode(texts, VOCAB, CAPTION_LEN)


def render(colours: torch.Tensor, shapes: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
           background: torch.Tensor, size: int = 16, noise: float = 0.02, seed: int = 0):
    """Draw scenes from their parameters (shapes as in :class:`Scenes`) → (images (N,3,H,W), objects (N,2,H,W)).

    Objects are drawn in slot order (slot 1 over slot 0); ``noise`` is the std of Gaussian pixel noise
    (deterministic in ``seed``)."""
    n = len(colours)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    img = np.repeat(background.double().numpy()[:, :, None, None], size, 2).repeat(size, 3)
    objects = np.zeros((n, 2, size, size), dtype=bool)
    palette = PALETTE.double().numpy()
    c, s, xy, r = colours.numpy(), shapes.numpy(), centres.double().numpy(), radii.double().numpy()
    for k in range(2):
        present = c[:, k] >= 0
        obj = _shape_masks(np.maximum(s[:, k], 0), xx[None] - xy[:, k, :1, None], yy[None] - xy[:, k, 1:, None],
                           r[:, k, None, None]) & present[:, None, None]
        img = np.where(obj[:, None], palette[np.maximum(c[:, k], 0)][:, :, None, None], img)
        objects[:, k] = obj
        if k == 1:
            objects[:, 0] &= ~obj
    img = img + np.random.default_rng(seed).normal(0, noise, img.shape)
    return (torch.from_numpy(np.clip(img, 0, 1).astype(np.float32)), torch.from_numpy(objects))


def make_scenes(n: int, size: int = 16, two_objects: float = 0.5, seed: int = 0,
                radius: tuple[float, float] = (0.2, 0.3)) -> Scenes:
    """``n`` captioned scenes of ``size``×``size`` pixels; deterministic in ``seed``.

    A share ``two_objects`` of the scenes holds two objects of different colours, the first in the left half
    and the second in the right half; the others one object anywhere. Radii are drawn from ``radius`` (shares
    of the image), colours and shapes uniformly."""
    if size < 8 or not 0 <= two_objects <= 1:
        raise ValueError(f"need size >= 8 and two_objects in [0, 1], got {size}, {two_objects}")
    rng = np.random.default_rng(seed)
    n_col, n_shape = len(COLOURS), len(SHAPE_CLASSES)
    two = rng.random(n) < two_objects
    colours = rng.integers(0, n_col, (n, 2))
    colours[:, 1] = (colours[:, 0] + rng.integers(1, n_col, n)) % n_col
    shapes = rng.integers(0, n_shape, (n, 2))
    r = rng.uniform(*radius, (n, 2)) * size
    cy = rng.uniform(r, size - r)
    half = size / 2
    cx_left = np.where(two, rng.uniform(r[:, 0], np.maximum(half, r[:, 0])), rng.uniform(r[:, 0], size - r[:, 0]))
    cx_right = rng.uniform(np.minimum(half, size - r[:, 1]), size - r[:, 1])
    colours[~two, 1], shapes[~two, 1] = -1, -1
    background = np.repeat(rng.uniform(0.3, 0.7, (n, 1)), 3, 1) * rng.uniform(0.95, 1.05, (n, 3))
    centres = np.stack([np.stack([cx_left, cy[:, 0]], 1), np.stack([cx_right, cy[:, 1]], 1)], 1)
    colours, shapes = torch.from_numpy(colours), torch.from_numpy(shapes)
    centres, radii = torch.from_numpy(centres).float(), torch.from_numpy(r).float()
    background = torch.from_numpy(background).float()
    images, objects = render(colours, shapes, centres, radii, background, size, seed=seed + 1)
    return Scenes(images, caption_ids(colours, shapes), objects, colours, shapes, centres, radii, background)


def segment(images: torch.Tensor, background: torch.Tensor | None = None, threshold: float = 0.25) -> torch.Tensor:
    """Object pixels (N, H, W) bool: farther than ``threshold`` (Euclidean, RGB) from the background colour (N, 3);
    without one, the per-image median colour stands in for it."""
    if background is None:
        background = images.flatten(2).median(dim=2).values
    return (images - background[:, :, None, None]).norm(dim=1) > threshold


def colour_index(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The palette colour (index into ``COLOURS``) nearest the mean pixel inside ``mask`` (N, H, W), per image;
    -1 where the mask is empty."""
    m = mask.float().unsqueeze(1)
    area = m.sum(dim=(2, 3))
    mean = (images * m).sum(dim=(2, 3)) / area.clamp(min=1)  # (N, 3)
    nearest = torch.cdist(mean, PALETTE.to(mean)).argmin(dim=1)
    return torch.where(area[:, 0] > 0, nearest, torch.full_like(nearest, -1))
