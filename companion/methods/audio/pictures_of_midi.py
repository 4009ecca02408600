"""Pictures of MIDI (Hawley 2024): piano-roll inpainting with drawn masks, and how to score it.

The paper inpaints piano-roll *images* (melody and accompaniment as colour channels) with a pixel-space HDiT and
"repaints" the masked region (RePaint resampling, extra noise) to get more notes that follow a drawn shape. Here
a roll (N, 2, P, T) (:mod:`companion.data.pianoroll`) is flattened to a sequence (N, 2P, T) for a 1-D temporal
UNet (:func:`to_sequence`), and the inpainting itself is ``companion.diffusion.gaussian.sample`` with
``known``/``known_mask`` (replacement) and ``resample``/``jump_length`` (RePaint).

Metrics, all **per roll** (one value per item, for paired comparisons), on binary notes (:func:`notes`) and a
mask with True = keep (the region scored is ``~mask``):

- :func:`density`: note cells inside the region per region step (notes sounding per step);
- :func:`coverage`: share of the region's steps with at least one note inside the region;
- :func:`centroid_correlation`: Pearson correlation, over the region's steps that have notes, between the
  mean pitch row of those notes and the mean row of the region (the drawn shape's centre);
- :func:`in_key_share`: share of note cells inside the region whose pitch class is in the roll's scale;
- :func:`border_continuity`: of the time-adjacent (known, inpainted) cell pairs on one row where either holds a
  note, the share where both do (notes carried across the mask's time border).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from ...data.pianoroll import MAJOR, scale_mask
from ...diffusion import gaussian


def to_sequence(rolls: torch.Tensor) -> torch.Tensor:
    """(N, C, P, T) → (N, C·P, T): pitch × channel as the input channels of a 1-D (temporal) model."""
    n, c, p, t = rolls.shape
    return rolls.reshape(n, c * p, t)


def from_sequence(seq: torch.Tensor, channels: int = 2) -> torch.Tensor:
    """(N, C·P, T) → (N, C, P, T), the inverse of :func:`to_sequence`."""
    n, cp, t = seq.shape
    return seq.reshape(n, channels, cp // channels, t)


def to_signal(rolls: torch.Tensor) -> torch.Tensor:
    """0/1 rolls → the diffusion model's range [-1, 1]."""
    return rolls * 2 - 1


def notes(x: torch.Tensor) -> torch.Tensor:
    """A sample in [-1, 1] (any shape) → bool notes (above the midpoint 0)."""
    return x > 0


def _region(mask: torch.Tensor) -> torch.Tensor:
    return ~mask


def density(notes_: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, C, P, T) bool notes, mask → (N,) note cells inside ``~mask`` per step that has masked cells."""
    region = _region(mask)
    steps = region.flatten(1, 2).any(1).sum(-1).clamp_min(1)  # (N,)
    return (notes_ & region).flatten(1).sum(-1) / steps


def coverage(notes_: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) share of the region's steps that hold at least one note inside the region."""
    region = _region(mask)
    region_steps = region.flatten(1, 2).any(1)  # (N, T)
    hit = (notes_ & region).flatten(1, 2).any(1)
    return hit.sum(-1) / region_steps.sum(-1).clamp_min(1)


def centroid_correlation(notes_: torch.Tensor, mask: torch.Tensor, min_steps: int = 3) -> torch.Tensor:
    """(N,) Pearson correlation between the per-step mean row of the notes inside the region and the per-step
    mean row of the region, over the steps with such notes (rows from all channels, counted per channel).
    0 where fewer than ``min_steps`` steps have notes or either series is constant: the shape was not followed.
    """
    region = _region(mask)
    rows = torch.arange(mask.shape[2], dtype=torch.float)[None, None, :, None]
    inside = (notes_ & region).float()
    count = inside.sum((1, 2))  # (N, T)
    centroid = (inside * rows).sum((1, 2)) / count.clamp_min(1)
    rf = region.float()
    target = (rf * rows).sum((1, 2)) / rf.sum((1, 2)).clamp_min(1)
    out = torch.zeros(len(mask))
    for i in range(len(mask)):
        keep = count[i] > 0
        if keep.sum() < min_steps:
            continue
        a, b = centroid[i, keep], target[i, keep]
        a, b = a - a.mean(), b - b.mean()
        denom = (a.norm() * b.norm()).item()
        if denom > 1e-9:
            out[i] = (a @ b).item() / denom
    return out


def in_key_share(notes_: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor, pitch_classes: torch.Tensor
                 ) -> torch.Tensor:
    """(N,) share of note cells inside ``~mask`` whose pitch class is in the roll's ``scale`` (N, 12) bool;
    ``pitch_classes`` (P,) is each row's pitch class. NaN where the region holds no note."""
    inside = (notes_ & _region(mask)).float()  # (N, C, P, T)
    in_key = scale[:, pitch_classes].float()[:, None, :, None]  # (N, 1, P, 1)
    total = inside.flatten(1).sum(-1)
    share = (inside * in_key).flatten(1).sum(-1) / total.clamp_min(1)
    return torch.where(total > 0, share, torch.full_like(share, float("nan")))


def border_continuity(notes_: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) over time-adjacent cell pairs on one row and channel with one cell known and one inpainted, and a
    note on at least one side: the share with a note on both sides. NaN where no such pair exists."""
    a, b = notes_[..., :-1], notes_[..., 1:]
    border = mask[..., :-1] != mask[..., 1:]
    either = border & (a | b)
    both = border & a & b
    n_either = either.flatten(1).sum(-1)
    share = both.flatten(1).sum(-1) / n_either.clamp_min(1)
    return torch.where(n_either > 0, share.float(), torch.full_like(share.float(), float("nan")))


def estimate_scale(notes_: torch.Tensor, pitch_classes: torch.Tensor) -> torch.Tensor:
    """(N, P, T) bool notes → (N, 12) bool: the major scale (or its relative minor: the same pitch classes)
    holding the most note cells, ties to the lowest tonic."""
    hist = torch.zeros(len(notes_), 12)
    hist.index_add_(1, pitch_classes, notes_.float().sum(-1))
    scales = torch.stack([scale_mask(t, False) for t in range(12)]).float()  # (12 tonics, 12 pcs)
    best = (hist @ scales.T).argmax(-1)
    return scales[best].bool()


def chance_in_key() -> float:
    """In-key share of pitch classes drawn uniformly: 7/12."""
    return len(MAJOR) / 12


def render(roll: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(2, P, T) roll in [0, 1] (and optional (2, P, T) bool keep-mask) → (3, P, T) RGB image, high pitches on
    top: melody red, accompaniment green (as in the paper's images), the region to inpaint shaded blue."""
    img = torch.zeros(3, *roll.shape[1:])
    img[0], img[1] = roll[0].clamp(0, 1), roll[1].clamp(0, 1)
    if mask is not None:
        img[2] = 0.35 * (~mask).any(0).float()
    return img.flip(1)


def inpaint(model, sched, context: torch.Tensor, mask: torch.Tensor, *, steps: int, resample: int = 1,
            jump_length: int = 1, mask_noise: float = 0.0, seed: int = 0, device="cpu") -> torch.Tensor:
    """Inpaint ``~mask`` of 0/1 rolls ``context`` (N, 2, P, T) with a 1-D denoiser over :func:`to_sequence`:
    DDPM over ``steps`` levels with x0 clipped to [-1, 1], known cells replaced by the noised context after every
    step, RePaint's ``resample``/``jump_length`` and ``mask_noise`` as in ``gaussian.sample``, on ``device`` (the
    model's). The generator is seeded with ``seed``, so arms with the same seed start from the same noise.
    Returns bool notes (N, 2, P, T) on the CPU.
    """
    known = to_sequence(to_signal(context)).to(device)
    out = gaussian.sample(model, known.shape, sched, sampler="ddpm", steps=steps, clip=1.0, known=known,
                          known_mask=to_sequence(mask).to(device), resample=resample, jump_length=jump_length,
                          mask_noise=mask_noise, generator=torch.Generator(device=device).manual_seed(seed))
    return notes(from_sequence(out)).cpu()


def evaluations(num_levels: int, resample: int = 1, jump_length: int = 1) -> int:
    """Denoiser evaluations of a sampler over ``num_levels`` levels with RePaint's schedule (one per descent)."""
    walk = gaussian.jump_schedule(num_levels, resample, jump_length)
    return sum(b > a for a, b in zip(walk[:-1], walk[1:]))


def score(notes_: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor, pitch_classes: torch.Tensor
          ) -> dict[str, torch.Tensor]:
    """All per-roll metrics of inpainted notes (N, 2, P, T): density, coverage, centroid correlation, in-key
    share and border continuity, each (N,) (NaN where undefined, see the functions)."""
    return {"density": density(notes_, mask), "coverage": coverage(notes_, mask),
            "centroid correlation": centroid_correlation(notes_, mask),
            "in-key share": in_key_share(notes_, mask, scale, pitch_classes),
            "border continuity": border_continuity(notes_, mask)}


def key_figure(rows: list[list[torch.Tensor]], row_titles: list[str], col_titles: list[str],
               curves: dict[str, tuple[list, list]], xlabel: str, cell: float = 1.4):
    """The paper's key figure at toy scale: a grid of rendered rolls (``rows[i][j]`` a (3, P, T) image) beside a
    panel of curves (name -> (x, y)) against the resample count."""
    nr, nc = len(rows), len(col_titles)
    fig = plt.figure(figsize=(cell * 1.3 * nc + 4.2, cell * nr))
    grid = fig.add_gridspec(nr, nc + 3)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), aspect="auto", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col_titles[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(row_titles[i], fontsize=8)
    ax = fig.add_subplot(grid[:, nc + 1:])
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(next(iter(curves.values()))[0]), [str(v) for v in next(iter(curves.values()))[0]])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
