"""Captioned clips of moving shapes, and per-tube statistics of them, for the video masked-modelling notebooks.

A clip shows one *captioned* object — a coloured shape moving left, right, up or down — and, optionally, a
*distractor* of another colour and shape, on a textured grey background, in one of the ``SCENES``: a static
camera and distractor, a distractor that moves too, or a camera that pans with the captioned object. Its
caption names the captioned object's colour and shape ("a red circle"), as a captioner such as BLIP would, and
its direction ("a red circle moves left") only when asked to — the direction is the probed label.

Tensors: clips (N, C, T, H, W) float in [0, 1]; captions (N, 3) or (N, 2) int64 word ids into ``VOCAB``
(colour, shape[, direction]); ``objects`` (N, T, H, W) bool, True on the captioned object; ``scenes`` (N,).

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


SCENES = ("static", "moving_distractor", "pan")


@dataclass
class ClipSet:
    clips: torch.Tensor  # (N, C, T, H, W) float32 in [0, 1]
    captions: torch.Tensor  # (N, W) int64 word ids: colour, shape[, direction]
    labels: torch.Tensor  # (N,) int64 direction of motion (the "action")
    objects: torch.Tensor  # (N, T, H, W) bool, True on the captioned object
    scenes: torch.Tensor | None = None  # (N,) int64 index into SCENES

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx) -> ClipSet:
        scenes = None if self.scenes is None else self.scenes[idx]
        return ClipSet(self.clips[idx], self.captions[idx], self.labels[idx], self.objects[idx], scenes)

    def split(self, n_first: int) -> tuple[ClipSet, ClipSet]:
        return self[:n_first], self[n_first:]

    def caption(self, i: int) -> str:
        return caption_text(self.captions[i])

    def scene(self, name: str) -> ClipSet:
        """The clips of scene ``name`` (one of ``SCENES``)."""
        return self[self.scenes == SCENES.index(name)]


def caption_text(ids) -> str:
    words = [VOCAB[int(i)] for i in ids]
    return f"a {words[0]} {words[1]} moves {words[2]}" if len(words) == 3 else f"a {words[0]} {words[1]}"


def _start(rng: np.random.Generator, radius: np.ndarray, velocity: np.ndarray, frames: int, size: int):
    """Start positions (N, 2) such that a disc of ``radius`` (N,) moving by ``velocity`` (N, 2) pixels per frame
    stays inside the frame for ``frames`` frames (as far as the frame allows)."""
    travel = velocity * (frames - 1)
    lo = radius[:, None] + np.maximum(-travel, 0.0)
    hi = size - radius[:, None] - np.maximum(travel, 0.0)
    return rng.uniform(lo, np.maximum(hi, lo))


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi, n)
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def make_clips(n: int, frames: int = 4, size: int = 16, speed: float = 1.5, distractor: bool = True,
               seed: int = 0, scenes: tuple[str, ...] = ("static",), name_direction: bool = True,
               texture: float = 0.06, pan_speed: float | None = None, radius: tuple[float, float] = (0.2, 0.28),
               distractor_radius: tuple[float, float] = (0.15, 0.22)) -> ClipSet:
    """``n`` captioned clips of ``frames`` frames of ``size``×``size`` pixels; deterministic in ``seed``.

    The captioned object has a radius in ``radius`` (shares of the frame) and moves ``speed`` pixels per frame
    through the scene in one of four directions (its label). The distractor (another colour and shape, radius
    in ``distractor_radius``) is drawn when ``distractor`` is set. Each clip's scene is drawn uniformly from
    ``scenes`` (``SCENES``):

    * ``"static"``: a static camera and a static distractor — the case motion cues are made for;
    * ``"moving_distractor"``: the distractor moves too, at the same speed in a random direction;
    * ``"pan"``: the camera pans with the captioned object at ``pan_speed`` pixels per frame (default
      ``speed``: a tracking shot that keeps the object still in the frame), so the textured background and
      the distractor move across the frame instead.

    Objects start where their path in the frame stays inside it. The background is grey with a sine grating of
    amplitude ``texture``. Captions name the object's colour and shape, and its direction only if
    ``name_direction`` (then the caption contains the label).
    """
    if frames < 1 or size < 8:
        raise ValueError(f"need frames >= 1 and size >= 8, got frames={frames}, size={size}")
    unknown = sorted(set(scenes) - set(SCENES))
    if unknown or not scenes:
        raise ValueError(f"scenes must be a non-empty subset of {SCENES}, got {scenes!r}")
    rng = np.random.default_rng(seed)
    n_col, n_shape = len(COLOURS), len(SHAPE_CLASSES)
    colour, shape, direction = rng.integers(0, n_col, n), rng.integers(0, n_shape, n), rng.integers(0, 4, n)
    choice = rng.integers(0, len(scenes), n) if len(scenes) > 1 else np.zeros(n, dtype=np.int64)
    scene = np.array([SCENES.index(s) for s in scenes])[choice]
    own = np.array([_STEP[DIRECTIONS[d]] for d in direction], dtype=np.float64)  # (N, 2) unit steps
    pan_speed = speed if pan_speed is None else pan_speed
    pan = np.where((scene == SCENES.index("pan"))[:, None], pan_speed * own, 0.0)  # (N, 2) the camera's motion
    r = rng.uniform(*radius, n) * size
    velocity = speed * own - pan  # (N, 2) the object's motion in the frame
    start = _start(rng, r, velocity, frames, size)  # (N, 2) x, y
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    base = rng.uniform(0.25, 0.6, n)
    freq, phase, angle = rng.uniform(0.3, 0.9, n), rng.uniform(0, 2 * np.pi, n), rng.uniform(0, np.pi, n)
    kx, ky = (freq * np.cos(angle))[:, None, None], (freq * np.sin(angle))[:, None, None]
    palette = np.array(list(COLOURS.values()))  # (4, 3)
    if distractor:
        d_colour = (colour + rng.integers(1, n_col, n)) % n_col
        d_shape = (shape + rng.integers(1, n_shape, n)) % n_shape
        d_r = rng.uniform(*distractor_radius, n) * size
        d_velocity = -pan  # static in the scene
        if "moving_distractor" in scenes:
            d_velocity = np.where((scene == SCENES.index("moving_distractor"))[:, None], speed * _unit(rng, n), -pan)
        d_start = _start(rng, d_r, d_velocity, frames, size)

    clips = np.empty((n, 3, frames, size, size))
    objects = np.empty((n, frames, size, size), dtype=bool)
    for t in range(frames):
        shift = pan * t  # the camera's offset: the background is seen at frame + shift
        wave = np.sin(kx * (xx + shift[:, :1, None]) + ky * (yy + shift[:, 1:, None]) + phase[:, None, None])
        frame = np.repeat((base[:, None, None] + texture * wave)[:, None], 3, axis=1)  # (N, 3, H, W)
        if distractor:
            pos = d_start + t * d_velocity
            d_obj = _shape_masks(d_shape, xx[None] - pos[:, :1, None], yy[None] - pos[:, 1:, None],
                                 d_r[:, None, None])
            frame = np.where(d_obj[:, None], palette[d_colour][:, :, None, None], frame)
        pos = start + t * velocity
        obj = _shape_masks(shape, xx[None] - pos[:, :1, None], yy[None] - pos[:, 1:, None], r[:, None, None])
        objects[:, t] = obj
        clips[:, :, t] = np.where(obj[:, None], palette[colour][:, :, None, None], frame)
    clips += rng.normal(0, 0.02, clips.shape)
    words = [colour, n_col + shape] + ([n_col + n_shape + direction] if name_direction else [])
    return ClipSet(torch.from_numpy(np.clip(clips, 0, 1).astype(np.float32)), torch.from_numpy(np.stack(words, 1)),
                   torch.from_numpy(direction.astype(np.int64)), torch.from_numpy(objects),
                   torch.from_numpy(scene.astype(np.int64)))


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
