"""Captioned clips of moving shapes, and per-tube statistics of them, for the video masked-modelling notebooks.

A clip shows one *captioned* object — a coloured shape moving left, right, up or down — and, optionally, a
static *distractor* of another colour and shape, on a textured grey background. Its caption names the
moving object's colour, shape and direction ("a red circle moves left"), as a captioner such as BLIP would.

Tensors: clips (N, C, T, H, W) float in [0, 1]; captions (N, 3) int64 word ids into ``VOCAB`` (colour,
shape, direction); ``objects`` (N, T, H, W) bool, True on the captioned object.

Tube tokens: a video transformer cuts a clip into tubes of ``tubelet`` frames × ``patch``×``patch`` pixels,
in (time, row, column) order — ``tube_means`` pools any per-pixel map the same way, so a tube's object share
or motion energy lines up with the token of ``companion.models.VideoMAE``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .images import SHAPE_CLASSES, _shape_masks

COLOURS = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.3, 0.95),
           "yellow": (0.95, 0.85, 0.1)}
DIRECTIONS = ("left", "right", "up", "down")
VOCAB = (*COLOURS, *SHAPE_CLASSES, *DIRECTIONS)
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass
class ClipSet:
    clips: torch.Tensor  # (N, C, T, H, W) float32 in [0, 1]
    captions: torch.Tensor  # (N, 3) int64 word ids: colour, shape, direction
    labels: torch.Tensor  # (N,) int64 direction of motion (the "action")
    objects: torch.Tensor  # (N, T, H, W) bool, True on the captioned object

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx) -> ClipSet:
        return ClipSet(self.clips[idx], self.captions[idx], self.labels[idx], self.objects[idx])

    def split(self, n_first: int) -> tuple[ClipSet, ClipSet]:
        return self[:n_first], self[n_first:]

    def caption(self, i: int) -> str:
        return caption_text(self.captions[i])


def caption_text(ids) -> str:
    colour, shape, direction = (VOCAB[int(i)] for i in ids)
    return f"a {colour} {shape} moves {direction}"


def make_clips(n: int, frames: int = 4, size: int = 16, speed: float = 1.5, distractor: bool = True,
               seed: int = 0) -> ClipSet:
    """``n`` captioned clips of ``frames`` frames of ``size``×``size`` pixels; deterministic in ``seed``.

    The captioned object has radius 20–28 % of the frame and moves ``speed`` pixels per frame, staying
    inside the frame; the distractor (another colour and shape) stands still.
    """
    if frames < 1 or size < 8:
        raise ValueError(f"need frames >= 1 and size >= 8, got frames={frames}, size={size}")
    rng = np.random.default_rng(seed)
    n_col, n_shape = len(COLOURS), len(SHAPE_CLASSES)
    colour, shape, direction = rng.integers(0, n_col, n), rng.integers(0, n_shape, n), rng.integers(0, 4, n)
    r = rng.uniform(0.2, 0.28, n) * size
    travel = speed * (frames - 1)
    step = np.array([_STEP[DIRECTIONS[d]] for d in direction], dtype=np.float64)  # (N, 2)
    # start so that the whole path stays inside the frame
    lo = r[:, None] + np.where(step < 0, travel, 0.0)
    hi = size - r[:, None] - np.where(step > 0, travel, 0.0)
    start = rng.uniform(lo, np.maximum(hi, lo))  # (N, 2) x, y
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    base = rng.uniform(0.25, 0.6, n)
    freq, phase, angle = rng.uniform(0.3, 0.9, n), rng.uniform(0, 2 * np.pi, n), rng.uniform(0, np.pi, n)
    wave = np.sin(freq[:, None, None] * (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy)
                  + phase[:, None, None])
    bg = np.repeat((base[:, None, None] + 0.06 * wave)[:, None], 3, axis=1)  # (N, 3, H, W)
    palette = np.array(list(COLOURS.values()))  # (4, 3)

    frame = bg.copy()
    if distractor:
        d_colour = (colour + rng.integers(1, n_col, n)) % n_col
        d_shape = (shape + rng.integers(1, n_shape, n)) % n_shape
        d_r = rng.uniform(0.15, 0.22, n) * size
        d_pos = rng.uniform(d_r[:, None], size - d_r[:, None], (n, 2))
        d_obj = _shape_masks(d_shape, xx[None] - d_pos[:, :1, None], yy[None] - d_pos[:, 1:, None], d_r[:, None, None])
        frame = np.where(d_obj[:, None], palette[d_colour][:, :, None, None], frame)

    clips = np.empty((n, 3, frames, size, size))
    objects = np.empty((n, frames, size, size), dtype=bool)
    for t in range(frames):
        pos = start + t * speed * step
        obj = _shape_masks(shape, xx[None] - pos[:, :1, None], yy[None] - pos[:, 1:, None], r[:, None, None])
        objects[:, t] = obj
        clips[:, :, t] = np.where(obj[:, None], palette[colour][:, :, None, None], frame)
    clips += rng.normal(0, 0.02, clips.shape)
    captions = np.stack([colour, n_col + shape, n_col + n_shape + direction], axis=1)
    return ClipSet(torch.from_numpy(np.clip(clips, 0, 1).astype(np.float32)), torch.from_numpy(captions),
                   torch.from_numpy(direction.astype(np.int64)), torch.from_numpy(objects))


def tube_means(maps: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """Per-pixel maps (N, T, H, W) → their mean over each tube (N, L), L = T/tubelet · (H/patch)²,
    in the token order of ``VideoMAE`` (time, row, column)."""
    return F.avg_pool3d(maps[:, None].float(), (tubelet, patch, patch)).flatten(1)


def motion_energy(clips: torch.Tensor) -> torch.Tensor:
    """Frame-difference magnitude (N, T, H, W): |x_t − x_{t−1}| summed over channels; the first frame
    repeats the second's difference. The motion cue of motion-guided masking (MGMAE/MGM use optical flow or
    codec motion vectors; on synthetic clips with a static camera, frame differences find the same regions)."""
    diff = (clips[:, :, 1:] - clips[:, :, :-1]).abs().sum(1)  # (N, T-1, H, W)
    return torch.cat([diff[:, :1], diff], dim=1)


def removed_share(visible: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Share of ``weights`` (N, L) ≥ 0 (e.g. a tube's object share) that falls on removed tokens, per clip (N,)."""
    return (weights * (~visible).float()).sum(1) / weights.sum(1).clamp(min=1e-8)
