"""Tests of companion.methods.segmentation.tetris: the click-conditioned segmenter, the exhaustive IoU map, the
click-sequence protocol and the trivial baseline."""

from __future__ import annotations

import math

import torch

from companion import attacks
from companion.data import clicks
from companion.data.images import make_shapes
from companion.methods.segmentation import tetris


def _setup(n=4, seed=0):
    torch.manual_seed(seed)
    scenes = make_shapes(n, size=16, seed=seed)
    return tetris.segmenter((8, 16)).eval(), scenes.images, scenes.masks[:, 0]


def test_exhaustive_map_matches_single_clicks_and_is_nan_off_the_object():
    model, images, masks = _setup()
    maps = tetris.iou_maps(model, images, masks, 1.5, batch_size=37)
    assert maps.shape == masks.shape and torch.equal(maps.isnan(), ~masks)
    n, (row, col) = 2, masks[2].nonzero()[5].tolist()
    one = tetris.first_click_ious(model, images[n:n + 1], masks[n:n + 1], torch.tensor([[[col + 0.5, row + 0.5]]]), 1.5)
    assert math.isclose(maps[n, row, col].item(), one.item(), abs_tol=1e-6)


def test_training_loss_is_finite_and_trains():
    model, images, masks = _setup(16)
    model.train()
    loss_fn = tetris.training_loss(1.5, 1.0, 3, torch.Generator().manual_seed(0))
    loss = loss_fn(model, images, masks[:, None])
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


def test_interaction_returns_per_click_ious_and_soft_iou_matches_hard_on_saturated_logits():
    model, images, masks = _setup()
    ious = tetris.interaction(model, images, masks, clicks.standard_clicks, 3, 1.5)
    assert ious.shape == (4, 3) and (ious >= 0).all() and (ious <= 1).all()
    logits = (masks.float() * 2 - 1) * 50
    assert torch.allclose(tetris.soft_iou(logits, masks), torch.ones(4))


def test_click_search_stays_on_the_object_and_never_reports_a_worse_extreme_than_its_start():
    model, images, masks = _setup()
    start, _ = clicks.standard_clicks(masks, torch.zeros_like(masks))
    score = tetris.click_score_fn(model, images, masks, 1.5)
    _, at_start = score(start)
    for maximise in (False, True):
        coords, found = attacks.optimise_clicks(score, start, masks, 3, 1.5, maximise=maximise)
        assert torch.equal(attacks.project_inside(coords, masks), coords)
        assert torch.allclose(score(coords)[1], found)
        assert ((found >= at_start) if maximise else (found <= at_start)).all()


def test_disk_baseline_is_one_for_a_disk_object():
    h = 16
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(h) + 0.5, indexing="ij")
    disk = ((xx - 8) ** 2 + (yy - 8) ** 2 <= 9)[None]
    assert tetris.disk_iou(disk, torch.tensor([[8.0, 8.0]]), 3.0).item() == 1.0
