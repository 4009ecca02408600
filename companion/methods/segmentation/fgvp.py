"""Fine-Grained Visual Prompting (Yang et al., NeurIPS 2023) at toy scale: zero-shot referring with a frozen CLIP by
marking each candidate object in the image (a visual prompt) and picking the candidate whose marked image best
matches the expression.

- :func:`referring_episodes` — from referring scenes, one episode per scene: the expression names one object's
  class (unique in the scene) that has a *distractor*, another object of the same colour or the same shape; the
  candidates are the scene's objects (the paper's SAM masks; here ground-truth masks).
- :func:`prompt_scores` — CLIP similarity between each candidate's visually prompted image
  (:func:`companion.masking.prompts.visual_prompt`: crop, box, circle, black / grey / blur reverse masks, blur +
  circle) and the expression's text embedding; the prediction is the argmax over candidates.
"""

from __future__ import annotations

import numpy as np
import torch

from ...data import refer
from ...masking.prompts import visual_prompt


def referring_episodes(scenes: refer.ReferScenes, seed: int = 0, clutter: bool = True):
    """One episode per scene → (target (N,) slot index, -1 where no object qualifies; candidates (N, M) bool).

    A target is a named object whose class is unique in its scene and which shares its colour or its shape with
    at least one other named object (drawn uniformly among those, with ``seed``). Candidates are the named
    objects, plus the clutter objects if ``clutter`` (class-agnostic proposals would include them).
    """
    labels = scenes.labels.numpy()
    rng = np.random.default_rng(seed)
    target = np.full(len(labels), -1)
    for i, lab in enumerate(labels):
        named = np.nonzero(lab >= 0)[0]
        eligible = [s for s in named if (lab[named] == lab[s]).sum() == 1
                    and any(refer.colour_of(lab[o]) == refer.colour_of(lab[s])
                            or refer.shape_of(lab[o]) == refer.shape_of(lab[s]) for o in named if o != s)]
        if eligible:
            target[i] = eligible[rng.integers(len(eligible))]
    candidates = scenes.labels >= 0
    if clutter:
        candidates = candidates | (scenes.labels == refer.CLUTTER_LABEL)
    return torch.from_numpy(target), candidates


@torch.no_grad()
def prompt_scores(clip, images: torch.Tensor, instances: torch.Tensor, candidates: torch.Tensor,
                  text: torch.Tensor, kind: str, blur_sigma: float = 1.5, batch_size: int = 256) -> torch.Tensor:
    """Cosine similarity of each candidate's prompted image (``blur_sigma``: the blur of the blur prompts) with its
    episode's expression.

    ``images`` (N, 3, H, W), ``instances`` (N, M, H, W) bool, ``candidates`` (N, M) bool, ``text`` (N, D) unit-norm
    text embeddings → (N, M) scores, ``-inf`` for slots that are not candidates.
    """
    rows, slots = candidates.nonzero(as_tuple=True)
    sims = []
    for i in range(0, len(rows), batch_size):
        r, s = rows[i:i + batch_size], slots[i:i + batch_size]
        emb = clip.encode_image(visual_prompt(images[r], instances[r, s], kind, blur_sigma))
        sims.append((emb * text[r]).sum(-1))
    scores = torch.full(candidates.shape, float("-inf"))
    scores[rows, slots] = torch.cat(sims) if sims else torch.zeros(0)
    return scores


def referring_correct(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, M) candidate scores, (N,) target slots → (N,) float 1 where the best-scoring candidate is the target."""
    return (scores.argmax(1) == target).float()
