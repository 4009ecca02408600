"""Tests of companion.methods.segmentation.fgvp: referring episodes with distractors and candidate scoring."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from companion.data import refer
from companion.methods.segmentation import fgvp


def test_episode_targets_are_unique_in_their_scene_and_have_a_same_colour_or_same_shape_distractor():
    scenes = refer.make_refer_scenes(60, seed=3)
    target, candidates = fgvp.referring_episodes(scenes, seed=0)
    assert (target >= 0).sum() > 10
    labels = scenes.labels
    for i in torch.nonzero(target >= 0)[:, 0].tolist():
        t = int(target[i])
        lab = labels[i, t]
        others = labels[i][(labels[i] >= 0) & (torch.arange(labels.shape[1]) != t)]
        assert lab >= 0 and not (others == lab).any() and candidates[i, t]
        assert ((refer.colour_of(others) == refer.colour_of(lab)) | (refer.shape_of(others) == refer.shape_of(lab))).any()
    assert torch.equal(candidates, (labels >= 0) | (labels == refer.CLUTTER_LABEL))
    _, named_only = fgvp.referring_episodes(scenes, seed=0, clutter=False)
    assert torch.equal(named_only, labels >= 0)


class MeanColourCLIP:
    """A stand-in CLIP whose image embedding is the unit-norm mean colour: black reverse masks keep only the
    candidate's colour."""

    def encode_image(self, images):
        return F.normalize(images.mean((2, 3)), dim=-1)


def test_black_reverse_mask_scores_pick_the_candidate_of_the_named_colour():
    scenes = refer.make_refer_scenes(40, seed=1, clutter=(0, 0))
    target, candidates = fgvp.referring_episodes(scenes, seed=0)
    keep = target >= 0
    colours = torch.tensor(refer.PALETTE, dtype=torch.float32)
    lab = scenes.labels[keep].gather(1, target[keep, None])[:, 0]
    text = F.normalize(colours[refer.colour_of(lab)], dim=-1)
    scores = fgvp.prompt_scores(MeanColourCLIP(), scenes.images[keep], scenes.instances[keep], candidates[keep], text,
                                "black", batch_size=7)
    assert torch.isinf(scores[~candidates[keep]]).all() and torch.isfinite(scores[candidates[keep]]).all()
    correct = fgvp.referring_correct(scores, target[keep])
    # colour decides whenever the distractors share only the shape; same-colour distractors tie at best
    assert correct.mean() > 0.5
