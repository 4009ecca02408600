"""DiffusionGuard (Choi et al., ICLR 2025) at toy scale: protecting an image against mask-based inpainting edits.

The threat: an editor keeps an object (the kept region; the inpainting mask is everything else) and lets a
text-conditioned inpainting model repaint the rest from a caption. The defence adds an imperceptible perturbation
to the object's pixels, found by L∞ PGD (:func:`companion.attacks.pgd_linf`, sign steps), so that the edit fails.

- **DiffusionGuard** (:func:`guard_loss`, the official ``attack_diffusionguard.py``): maximise the L2 norm of the
  noise that the inpainting model predicts at the *first, noisiest* level of the sampler's grid, from pure noise
  z_T ~ N(0, I) (fresh every step), conditioned on ``[mask, masked image]`` and an empty caption (the defender
  does not know the edit's caption). Only the masked (kept) image carries the perturbation.
- **AdvDM-style** (:func:`advdm_loss`, the baseline the issue compares against): maximise the denoising loss
  ``‖ε_θ(x_t, t, cond) − ε‖²`` at a uniformly random level t, x_t the noised perturbed image.
- **Mask augmentation** (:func:`contour_shrink`, the official ``mask_generation.py`` "contour_shrink"): each PGD
  step sees the kept region with random dents cut into its contour, so the kept region is always a subset of the
  object, as the official code's perturbed contours stay inside the original mask.

Edits (:func:`edit`) are DDIM (η = 0) samples of the inpainting model with classifier-free guidance from a given
x_T, so a protected and an unprotected edit with the same x_T differ only through the perturbation. Masks here are
bool (N, 1, H, W) *kept* regions (True = keep); the model's inpainting mask is their complement (1 = fill).
Images are [0, 1] (N, 3, H, W); the model works in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ... import masks
from ...data import scenes
from ...diffusion.gaussian import Schedule, classifier_free, levels, sample
from ...models.toy_sd import from_model, inpaint_cond, to_model


@dataclass
class EditTask:
    """Images to protect and the edit an attacker would make: ``images`` (N, 3, H, W) with one object each,
    ``keep`` (N, 1, H, W) bool (the object), ``captions`` (N, 4) (the kept object and one to add, left to right),
    ``new_colour`` (N,) palette index of the object to add, ``background`` (N, 3)."""
    images: torch.Tensor
    keep: torch.Tensor
    captions: torch.Tensor
    new_colour: torch.Tensor
    background: torch.Tensor

    def caption(self, i: int) -> str:
        return scenes.caption_text(self.captions[i])


def edit_task(n: int, size: int = 16, seed: int = 0) -> EditTask:
    """``n`` scenes with one object in the left half (two-object scenes of :func:`scenes.make_scenes` with the
    right object removed); the edit's caption is the original two-object caption, so the edit asks for the
    removed object's colour and shape in the background, to the right of the kept one."""
    s = scenes.make_scenes(n, size, two_objects=1.0, seed=seed)
    colours, shapes = s.colours.clone(), s.shapes.clone()
    colours[:, 1], shapes[:, 1] = -1, -1
    images, objects = scenes.render(colours, shapes, s.centres, s.radii, s.background, size, seed=seed + 1)
    return EditTask(images, objects[:, :1], s.captions, s.colours[:, 1], s.background)


def _dilate(keep: torch.Tensor, px: int = 1) -> torch.Tensor:
    return F.max_pool2d(keep.float(), 2 * px + 1, 1, px) > 0


def _erode(keep: torch.Tensor, px: int = 1) -> torch.Tensor:
    return ~_dilate(~keep, px)


def _nonempty(mask: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``mask`` where it keeps at least one pixel, else ``fallback`` (per image)."""
    empty = ~mask.flatten(1).any(1)
    return torch.where(empty[:, None, None, None], fallback, mask)


def contour_shrink(keep: torch.Tensor, generator: torch.Generator, max_radius: float = 2.0,
                   max_dents: int = 3) -> torch.Tensor:
    """Mask augmentation: the kept regions (N, 1, H, W) bool with 1..``max_dents`` (uniform) round dents cut
    into their contour — discs centred on random contour pixels, radius uniform in [0.5, ``max_radius``] px.
    The result is a non-empty subset of ``keep`` (an image whose dents would remove everything keeps its mask)."""
    n, _, h, w = keep.shape
    contour = (keep & ~_erode(keep)).flatten(1).float()  # (N, H·W)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten().float(), xs.flatten().float()
    out = keep.clone().flatten(1)
    dents = torch.randint(1, max_dents + 1, (n,), generator=generator)
    for k in range(max_dents):
        centre = torch.multinomial(contour + 1e-12, 1, generator=generator)[:, 0]  # (N,)
        radius = 0.5 + (max_radius - 0.5) * torch.rand(n, generator=generator)
        dist = torch.hypot(ys[None] - ys[centre][:, None], xs[None] - xs[centre][:, None])  # (N, H·W)
        cut = (dist <= radius[:, None]) & (k < dents)[:, None]
        out &= ~cut
    return _nonempty(out.view_as(keep), keep)


UNSEEN = ("dilated", "eroded", "box", "brushed")


def unseen_masks(keep: torch.Tensor, generator: torch.Generator, brush_area: float = 0.15) -> dict[str, torch.Tensor]:
    """Kept regions an editor might draw instead of the exact object mask (none of them the augmentation's
    dents): ``dilated`` (+1 px), ``eroded`` (−1 px), ``box`` (the object's bounding box) and ``brushed`` (the
    object with free-form brush strokes of ``brush_area`` of the image erased, :func:`masks.free_form`).
    Each (N, 1, H, W) bool; a region that would be empty falls back to the object."""
    n, _, h, w = keep.shape
    rows, cols = keep.any(3), keep.any(2)  # (N, 1, H), (N, 1, W)
    box = rows[:, :, :, None] & cols[:, :, None, :]
    strokes = masks.free_form(n, h, brush_area, generator)
    return {"dilated": _dilate(keep), "eroded": _nonempty(_erode(keep), keep), "box": box,
            "brushed": _nonempty(keep & ~strokes, keep)}


def guard_level(sched: Schedule, grid_steps: int) -> int:
    """The level DiffusionGuard attacks: the first (noisiest) level of a ``grid_steps``-step DDIM grid (the
    official code takes the first timestep of a 4-step schedule)."""
    return levels(sched, "ddim", grid_steps)[0]


def _null(n: int, device) -> torch.Tensor:
    return torch.full((n, scenes.CAPTION_LEN), scenes.PAD, dtype=torch.long, device=device)


def guard_loss(model, level: int, generator: torch.Generator):
    """DiffusionGuard's objective as ``loss(x_adv, keep) -> (N,)``: ‖ε_θ(z_T, level, [mask, masked x_adv], ∅)‖₂
    per image, z_T ~ N(0, I) drawn fresh on ``generator`` at every call (to be maximised)."""
    def loss(x_adv: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n = len(x_adv)
        cond = inpaint_cond(_null(n, x_adv.device), to_model(x_adv), (~keep).float())
        z = torch.randn(x_adv.shape, generator=generator).to(x_adv)
        t = torch.full((n,), level, dtype=torch.long, device=x_adv.device)
        return model(z, t, cond).flatten(1).norm(dim=1)
    return loss


def advdm_loss(model, sched: Schedule, generator: torch.Generator):
    """The AdvDM-style objective as ``loss(x_adv, keep) -> (N,)``: the inpainting model's denoising loss
    ‖ε_θ(x_t, t, [mask, masked x_adv], ∅) − ε‖² (mean over pixels) at a level t uniform per image and call,
    x_t = q_sample(x_adv, t, ε) (to be maximised)."""
    def loss(x_adv: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n = len(x_adv)
        x0 = to_model(x_adv)
        t = torch.randint(0, sched.num_steps, (n,), generator=generator).to(x_adv.device)
        noise = torch.randn(x_adv.shape, generator=generator).to(x_adv)
        cond = inpaint_cond(_null(n, x_adv.device), x0, (~keep).float())
        return (model(sched.q_sample(x0, t, noise), t, cond) - noise).pow(2).flatten(1).mean(1)
    return loss


def random_sign(images: torch.Tensor, keep: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """The control perturbation: ±``eps`` with random signs on the kept pixels (a random corner of the same
    L∞ ball), clipped to [0, 1]."""
    signs = torch.randint(0, 2, images.shape, generator=generator).to(images) * 2 - 1
    return (images + eps * signs * keep).clamp(0, 1)


@torch.no_grad()
def edit(model, sched: Schedule, images: torch.Tensor, keep: torch.Tensor, captions: torch.Tensor,
         start: torch.Tensor, steps: int = 10, guidance: float = 3.0, batch_size: int = 256) -> torch.Tensor:
    """The attacker's edit: keep ``keep`` of ``images`` and repaint the rest from ``captions`` by ``steps`` DDIM
    (η = 0) steps with classifier-free guidance ``guidance``, starting from ``start`` (N, 3, H, W) noise; x0
    estimates clipped to [-1, 1]. Returns the edited images (N, 3, H, W) in [0, 1], not composited (the kept
    region is the model's output too)."""
    fn = model if guidance == 1 else classifier_free(model, guidance, model.null_cond)
    out = []
    for i in range(0, len(images), batch_size):
        sl = slice(i, i + batch_size)
        cond = inpaint_cond(captions[sl], to_model(images[sl]), (~keep[sl]).float())
        out.append(sample(fn, start[sl].shape, sched, cond=cond, sampler="ddim", steps=steps, start=start[sl],
                          clip=1.0))
    return from_model(torch.cat(out))


def chain_loss(model, sched: Schedule, captions: torch.Tensor, steps: int, guidance: float,
               generator: torch.Generator):
    """A full-chain objective (PhotoGuard's diffusion attack, for the benchmark) as ``loss(x_adv, keep) -> (N,)``:
    the squared distance of the whole ``steps``-step DDIM edit (fresh x_T per call) from mid-grey, *negated*
    (maximising it pulls the edit towards grey); every step is differentiated, 2·``steps`` UNet passes."""
    def loss(x_adv: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        fn = model if guidance == 1 else classifier_free(model, guidance, model.null_cond)
        cond = inpaint_cond(captions, to_model(x_adv), (~keep).float())
        x = torch.randn(x_adv.shape, generator=generator).to(x_adv)
        for t_now, t_next in zip(levels(sched, "ddim", steps), levels(sched, "ddim", steps)[1:] + [-1]):
            t = torch.full((len(x),), t_now, dtype=torch.long, device=x.device)
            eps = fn(x, t, cond)
            x0 = sched.predict_x0(x, t, eps).clamp(-1, 1)
            eps = sched.predict_eps(x, t, x0)
            ab_next = sched._ab(torch.full_like(t, t_next), x)
            x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        return -x.pow(2).flatten(1).mean(1)
    return loss


def region_rmse(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Root-mean-square difference of images a, b (N, 3, H, W) over the pixels of ``region`` (N, 1, H, W) bool,
    per image (N,); 0 for an empty region."""
    m = region.to(a.dtype)
    sq = ((a - b) ** 2 * m).sum((1, 2, 3))
    return (sq / (3 * m.sum((1, 2, 3))).clamp(min=1)).sqrt()


def added_colour(edited: torch.Tensor, fill: torch.Tensor, background: torch.Tensor,
                 threshold: float = 0.25) -> torch.Tensor:
    """The palette colour (N,) of what the edit drew in the ``fill`` region (N, 1, H, W) bool: the nearest palette
    colour of the pixels there that differ from the scene's ``background`` colour (``scenes.segment``); -1 where
    the edit drew nothing."""
    drawn = scenes.segment(edited, background, threshold) & fill[:, 0]
    return scenes.colour_index(edited, drawn)
