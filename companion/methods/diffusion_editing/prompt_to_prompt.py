"""Prompt-to-Prompt (Hertz et al., ICLR 2023) at toy scale: word-swap editing by cross-attention injection.

The paper's observation: in a text-conditioned diffusion UNet the cross-attention map of each prompt word (N,
heads, pixels, words) lies on the image region that word describes, so the layout of a sample is fixed by these
maps early in sampling. A *word swap* edit ("red circle" → "blue circle") therefore samples the edited prompt
from the same noise x_T while the edited rows use the **source prompt's maps** for the first τ·T steps (the
official code's ``cross_replace_steps``; ``AttentionReplace`` with an identity word mapper, since a swap keeps
the word positions), and their own maps afterwards. Re-sampling the edited prompt with the same seed and no
injection is the baseline: the layout may change with the word.

Here the model is the zoo's ``ToySD`` (captions of four words, ``colour shape [colour shape]``), the controller
is :class:`companion.diffusion.control.AttentionControl`, and the measurements are:

- per-word maps (``control.word_maps``) and the share of a word's attention inside its object's ground-truth mask
  (``control.mass_inside``), against the mask's share of the image (the premise that the maps are spatial);
- the layout kept by an edit: IoU of the object pixels (``data.scenes.segment``) of source and edit;
- the attribute changed: the colour of the edited object read back by the zoo's attribute classifier.

Shapes: captions (N, 4) long; images (N, 3, H, W) in [0, 1]; masks (N, H, W) bool.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from ...data import scenes
from ...diffusion import gaussian
from ...diffusion.control import AttentionControl, word_maps
from ...models.toy_sd import TOKEN_OFFSET, from_model, to_model

COLOUR_IDS = tuple(range(1, 1 + len(scenes.PALETTE)))  # caption ids of the colour words, in palette order


def swap_colour(captions: torch.Tensor, slot: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The word-swap edit: the colour word of object ``slot`` (caption position 2·slot) replaced by a different
    colour drawn uniformly → (edited captions (N, 4), new palette index (N,)). Every caption must name that slot."""
    pos = 2 * slot
    old = captions[:, pos] - COLOUR_IDS[0]  # palette index
    if (old < 0).any() or (old >= len(COLOUR_IDS)).any():
        raise ValueError(f"every caption needs a colour word at position {pos}")
    shift = torch.randint(1, len(COLOUR_IDS), (len(captions),), generator=generator)
    new = (old + shift) % len(COLOUR_IDS)
    edited = captions.clone()
    edited[:, pos] = new + COLOUR_IDS[0]
    return edited, new


def injection_until(levels: list[int], tau: float) -> int:
    """The controller's ``until`` level for injecting during the first ``round(tau · len(levels))`` of the
    descending sampling ``levels``: the lowest injected level (levels ≥ it are replaced); above every level
    (no injection) when that count is 0."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    k = round(tau * len(levels))
    return levels[k - 1] if k > 0 else max(levels) + 1


def word_masks(objects: torch.Tensor) -> torch.Tensor:
    """Ground-truth region of each caption word: objects (N, 2, H, W) → (N, 4, H, W), words 2k and 2k+1 (colour,
    shape) both the mask of object k."""
    return objects.repeat_interleave(2, dim=1)


def sample_edits(model, sched: gaussian.Schedule, source: torch.Tensor, target: torch.Tensor, x_T: torch.Tensor,
                 taus, steps: int, scale: float) -> tuple[torch.Tensor, dict[float, torch.Tensor]]:
    """Sample the ``source`` captions (N, 4) and, once per τ in ``taus``, the ``target`` captions, all in one batch
    from the same noise ``x_T`` (N, 3, H, W), with DDIM (η = 0, ``steps`` steps) and classifier-free guidance
    ``scale``; the target block of τ uses the source rows' cross-attention maps during the first τ·steps steps
    → (source images (N, 3, H, W), {τ: edited images (N, 3, H, W)}), in [0, 1].

    Only the conditional rows are edited, as in the official code (the unconditional branch keeps its own maps).
    τ = 0 is plain same-seed re-sampling of the target. Sharing the source rows among the τ blocks changes no
    number: each row of the batch is computed independently of the others except through the injected maps."""
    n, taus = len(source), list(taus)
    ctl = AttentionControl(model, model.cross_attention_layers())
    grid = gaussian.levels(sched, "ddim", steps)
    guided = gaussian.classifier_free(ctl, scale, model.null_cond)
    captions = torch.cat([source] + [target] * len(taus))
    with ExitStack() as stack:
        for k, tau in enumerate(taus):
            block = torch.arange((k + 1) * n, (k + 2) * n)
            stack.enter_context(ctl.replace(torch.arange(n), block, until=injection_until(grid, tau)))
        x = gaussian.sample(guided, (len(captions), *x_T.shape[1:]), sched, cond={"captions": captions},
                            sampler="ddim", steps=steps, start=x_T.repeat(len(taus) + 1, 1, 1, 1))
    images = from_model(x).split(n)
    return images[0], dict(zip(taus, images[1:]))


def scene_maps(model, sched: gaussian.Schedule, images: torch.Tensor, captions: torch.Tensor, levels: list[int],
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-word cross-attention maps of real scenes: ``images`` (N, 3, H, W) in [0, 1] noised to each of ``levels``
    (fresh noise per level), denoised once with their ``captions`` while the maps are stored → {layer name:
    (N, 4, H, W)} (``control.word_maps`` over that layer's heads and all levels)."""
    ctl = AttentionControl(model, model.cross_attention_layers())
    x0 = to_model(images)
    with torch.no_grad(), ctl.store():
        for level in levels:
            t = torch.full((len(x0),), level, dtype=torch.long)
            ctl(sched.q_sample(x0, t, generator=generator), t, {"captions": captions})
    return {name: word_maps([m for ms in by_level.values() for m in ms], images.shape[-1], TOKEN_OFFSET)
            for name, by_level in ctl.maps.items()}
