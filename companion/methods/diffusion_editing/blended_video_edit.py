"""Blended latent diffusion under attention control for video editing (Liu, Wu & Xie, 2024) at toy scale.

The paper edits one object of a real video with an image diffusion model (Stable Diffusion) and three pieces,
all training-free:

1. **DDIM-inverted background latents.** Blended latent diffusion (Avrahami et al.) blends, after every denoising
   step, the edited latent inside a mask with the *source* latent outside it; the original noises the source to
   each level with fresh random noise. The paper instead takes the background latents from a DDIM inversion of
   the source frame (η = 0), and starts the edit from the inverted x_T: the deterministic path leads back to the
   source wherever the edit does not act.
2. **An automatic blend mask** from the cross-attention maps of the edited word, recorded during the diffusion
   steps and thresholded (as Prompt-to-Prompt's local blending), instead of a user-drawn mask.
3. **Temporal-spatial attention**: the UNet's self-attention of frame f reads keys and values from the clip's
   first frame and frame f−1 (Tune-A-Video's sparse-causal attention; ``UNet.cross_frame``), so frames are edited
   consistently.

Here the image model is the zoo's pixel-space ``ToySD`` (16×16 captioned shape scenes), so there are no latents:
the blending acts on pixels, which makes the final blend exact outside the mask. Background preservation is
therefore measured outside the *ground-truth* object mask, which differs from the blend mask wherever the
automatic mask is looser than the object.

Shapes: a clip batch is laid out clip-major, (C·F, ...) for C clips of F frames (the layout ``cross_frame``
expects); images (N, 3, H, W) in [0, 1] unless said "model space" ([-1, 1]); masks (N, H, W) bool; captions
(N, 4) long (``data.scenes`` ids).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...data import scenes
from ...diffusion import gaussian
from ...diffusion.control import AttentionControl, word_maps
from ...models.toy_sd import TOKEN_OFFSET

N_COLOURS = len(scenes.PALETTE)
COLOUR_ID0 = 1  # caption id of the first colour word ("red"): scenes.VOCAB = (<pad>, colours..., shapes...)


@dataclass
class Clips:
    """Moving-object clips: every clip shows two objects (left and right half) moving vertically by whole pixels.

    frames (C, F, 3, H, W) in [0, 1]; objects (C, F, 2, H, W) bool (slot k = the k-th named object); captions
    (C, 4); colours / shapes (C, 2); velocity (C, 2) the vertical displacement per frame of each object (±1·speed
    pixels); slot (C,) the object to edit; new_colour (C,) its target palette index; edited (C, 4) the edited
    captions (the colour word of ``slot`` swapped).
    """

    frames: torch.Tensor
    objects: torch.Tensor
    captions: torch.Tensor
    colours: torch.Tensor
    shapes: torch.Tensor
    velocity: torch.Tensor
    slot: torch.Tensor
    new_colour: torch.Tensor
    edited: torch.Tensor

    @property
    def n_frames(self) -> int:
        return self.frames.shape[1]

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """(C, F, ...) → (C·F, ...), clip-major."""
        return x.reshape(-1, *x.shape[2:])

    def per_frame(self, x: torch.Tensor) -> torch.Tensor:
        """Per-clip rows (C, ...) repeated for every frame → (C·F, ...)."""
        return x.repeat_interleave(self.n_frames, dim=0)

    def edited_object(self) -> torch.Tensor:
        """Ground-truth mask of the edited object in every frame → (C·F, H, W)."""
        idx = self.slot[:, None, None, None, None].expand(-1, self.n_frames, 1, *self.objects.shape[-2:])
        return self.flat(self.objects.gather(2, idx)[:, :, 0])

    def edited_velocity(self) -> torch.Tensor:
        """Vertical displacement per frame of the edited object → (C,)."""
        return self.velocity.gather(1, self.slot[:, None])[:, 0]


def make_clips(n_clips: int, frames: int, size: int = 16, speed: int = 1, seed: int = 0,
               min_visible: float = 0.75) -> Clips:
    """``n_clips`` clips of ``frames`` frames in ``toy_sd``'s scene distribution (``scenes.make_scenes`` with two
    objects of different colours, left and right), each object moving up or down by ``speed`` whole pixels per
    frame (the right object is drawn over the left one where they overlap, as in the scenes); one object per clip
    is to be recoloured to a palette colour neither object has: either object at random, or the right one where the
    left one is less than ``min_visible`` visible in some frame (an edit of a hidden object is not defined).
    Scenes whose objects would leave the image in some frame are skipped (drawn from a larger pool). Deterministic
    in ``seed``."""
    if frames < 2 or speed < 0:
        raise ValueError(f"need frames >= 2 and speed >= 0, got {frames}, {speed}")
    pool = 4 * n_clips + 16
    base = scenes.make_scenes(pool, size, two_objects=1.0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    travel = (frames - 1) * speed
    r = base.radii.double().numpy()
    sign = rng.choice([-1, 1], (pool, 2))
    low = r + np.where(sign > 0, 0, travel)  # the first frame's y range that keeps the whole path inside
    high = size - r - np.where(sign > 0, travel, 0)
    start_y = rng.uniform(low, np.maximum(low, high))
    keep = np.flatnonzero((high >= low).all(1))[:n_clips]
    if len(keep) < n_clips:
        raise ValueError(f"only {len(keep)} of {pool} scenes keep both objects inside {size} px over {frames} "
                         f"frames at speed {speed}; use fewer frames or a lower speed")
    base, start_y, sign = base[torch.from_numpy(keep)], start_y[keep], sign[keep]
    images, objects, left_visible = [], [], torch.ones(n_clips)
    left_alone = torch.stack([base.colours[:, 0], torch.full_like(base.colours[:, 1], -1)], 1)
    for f in range(frames):
        centres = base.centres.clone()
        centres[:, :, 1] = torch.from_numpy(start_y + f * sign * speed).float()
        img, obj = scenes.render(base.colours, base.shapes, centres, base.radii, base.background, size,
                                 seed=seed + 10 + f)
        whole = scenes.render(left_alone, base.shapes, centres, base.radii, base.background, size, noise=0.0)[1]
        left_visible = torch.minimum(left_visible, obj[:, 0].sum((1, 2)) / whole[:, 0].sum((1, 2)).clamp_min(1))
        images.append(img)
        objects.append(obj)
    coin = torch.from_numpy(rng.integers(0, 2, n_clips))
    slot = torch.where(left_visible >= min_visible, coin, torch.ones_like(coin))
    free = [[c for c in range(N_COLOURS) if c not in row] for row in base.colours.tolist()]
    new_colour = torch.tensor([choices[rng.integers(len(choices))] for choices in free])
    edited = base.captions.clone()
    edited[torch.arange(n_clips), 2 * slot] = new_colour + COLOUR_ID0
    return Clips(torch.stack(images, 1), torch.stack(objects, 1), base.captions, base.colours, base.shapes,
                 torch.from_numpy(sign * speed), slot, new_colour, edited)


def word_map(maps: list[torch.Tensor], key: torch.Tensor, size: int) -> torch.Tensor:
    """The cross-attention map of one word per image, averaged over layers → (N, size, size), normalised to sum 1
    per image (``control.word_maps``; ``maps`` as there, ``key`` (N,) the word's attention key per image)."""
    return word_maps(maps, size)[torch.arange(len(key)), key.cpu()]


def auto_mask(word: torch.Tensor, threshold: float, dilate: int = 1, norm: str = "minmax") -> torch.Tensor:
    """The blend mask from a word map (N, H, W): max-pooled over a (2·dilate+1)² window, rescaled per image and
    thresholded at ``threshold`` → (N, H, W) bool, True = edit here.

    ``norm="max"`` divides by the maximum (Prompt-to-Prompt's local blend); ``"minmax"`` maps the minimum to 0 and
    the maximum to 1 (DiffEdit's mask normalisation), which removes the floor a word's attention keeps over the
    background when the caption has only a few keys to spread each pixel's attention over."""
    if norm not in ("max", "minmax"):
        raise ValueError(f"norm must be 'max' or 'minmax', got {norm!r}")
    m = word[:, None]
    if dilate > 0:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    m = m[:, 0].flatten(1)
    low = m.min(1, keepdim=True).values if norm == "minmax" else torch.zeros_like(m[:, :1])
    m = (m - low) / (m.max(1, keepdim=True).values - low).clamp_min(1e-12)
    return (m > threshold).view_as(word)


def flicker(frames: torch.Tensor, region: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """Frame-to-frame change of a moving region after its known motion, per clip → (C,).

    frames (C, F, 3, H, W) in [0, 1]; region (C, F, H, W) bool, the (visible part of the) object in each frame;
    velocity (C,) its whole-pixel vertical displacement per frame. For each pair (f, f+1) frame f and its region
    are shifted by the displacement, and the mean absolute difference to frame f+1 is taken over the 3 channels
    and the pixels in both regions (so an occluding object is left out); pairs are averaged."""
    c, n_f = frames.shape[:2]
    out = torch.zeros(c)
    for i in range(c):
        dy = int(velocity[i])
        diffs = []
        for f in range(n_f - 1):
            m = region[i, f + 1] & torch.roll(region[i, f], shifts=dy, dims=0)
            moved = torch.roll(frames[i, f], shifts=dy, dims=1)
            diffs.append((frames[i, f + 1] - moved).abs()[:, m].mean() if m.any() else torch.tensor(0.0))
        out[i] = torch.stack(diffs).mean()
    return out


def invert(model, x0: torch.Tensor, captions: torch.Tensor, sched: gaussian.Schedule, steps: int,
           token: torch.Tensor, layers=None) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """DDIM inversion of the source (model space, (N, 3, H, W)) under its own ``captions``, recording the
    cross-attention maps of every step → (inversion latents by level (:func:`level_lookup`), the map of the word at
    caption position ``token`` (N,) (:func:`word_map`, (N, H, W)) read from the cross-attention ``layers`` (names
    of ``model.cross_attention_layers()``; default all); the word's attention key is ``token + TOKEN_OFFSET``,
    after the model's start token)."""
    ctl = AttentionControl(model, model.cross_attention_layers())
    with ctl.store():
        path = gaussian.ddim_invert(ctl, x0, sched, steps, {"captions": captions})
    maps = [ctl.mean_maps(name) for name in (layers or ctl.layers)]
    return level_lookup(path, sched, steps), word_map(maps, token + TOKEN_OFFSET, x0.shape[-1])


def level_lookup(path: list[torch.Tensor], sched: gaussian.Schedule, steps: int) -> dict[int, torch.Tensor]:
    """DDIM-inversion latents by level: ``path`` from ``gaussian.ddim_invert`` (clean first, x_T last) → {level:
    x}, with level -1 the clean input."""
    grid = [-1, *gaussian.levels(sched, "ddim", steps)[::-1]]
    if len(path) != len(grid):
        raise ValueError(f"an inversion over {steps} steps visits {len(grid)} levels, got {len(path)} latents")
    return dict(zip(grid, path))


def edit(model, sched: gaussian.Schedule, x0: torch.Tensor, target: torch.Tensor, *, steps: int,
         guidance: float, background: str, mask: torch.Tensor | None = None,
         inverted: dict[int, torch.Tensor] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One editing run of a batch: DDIM (η = 0) from level T to clean under the ``target`` captions with
    classifier-free guidance ``guidance`` → the edited images (N, 3, H, W) in model space.

    x0 (N, 3, H, W) the source in model space; ``background``:

    - ``"random"``: blended diffusion as in the original (Avrahami et al.): x_T drawn from ``generator`` and, after
      every step, the pixels outside ``mask`` replaced by the source noised to that level with fresh noise;
    - ``"inverted"``: x_T and the background of every level taken from the DDIM inversion ``inverted``
      (:func:`level_lookup`); the paper's background latents;
    - ``"none"``: no blending; x_T from ``inverted`` (plain inversion-based editing of the whole frame).

    ``mask`` (N, H, W) bool, True = edit here (not used by ``"none"``). Call it inside ``model.unet.cross_frame``
    for temporal-spatial attention."""
    if background not in ("random", "inverted", "none"):
        raise ValueError(f"background must be 'random', 'inverted' or 'none', got {background!r}")
    if background != "none" and mask is None:
        raise ValueError(f"background={background!r} blends through a mask: pass mask")
    if background != "random" and inverted is None:
        raise ValueError(f"background={background!r} starts from a DDIM inversion: pass inverted")
    fn = model if guidance == 1.0 else gaussian.classifier_free(model, guidance, model.null_cond)
    kw = dict(cond={"captions": target}, sampler="ddim", steps=steps, generator=generator, device=x0.device)
    keep = None if mask is None else ~mask.unsqueeze(1)  # True = background, the known region
    if background == "random":
        return gaussian.sample(fn, x0.shape, sched, known=x0, known_mask=keep, **kw)
    start = inverted[max(inverted)]
    if background == "none":
        return gaussian.sample(fn, x0.shape, sched, start=start, **kw)
    return gaussian.sample(fn, x0.shape, sched, start=start, known=lambda level: inverted[level], known_mask=keep,
                           **kw)

