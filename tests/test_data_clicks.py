"""Tests of companion.data.clicks: differentiable Gaussian click maps and the click simulators."""

from __future__ import annotations

import numpy as np
import torch

from companion.data import clicks
from companion.data.images import make_shapes


def _inside(coords: torch.Tensor, regions) -> torch.Tensor:
    """Whether each click (N, K, 2) lies in its image's region (N, H, W) bool → (N, K)."""
    regions = torch.as_tensor(np.asarray(regions))
    col, row = coords[..., 0].floor().long(), coords[..., 1].floor().long()
    n = torch.arange(len(regions))[:, None].expand_as(col)
    return regions[n, row, col]


def test_click_maps_gradients_match_finite_differences():
    coords = torch.tensor([[[3.3, 4.1], [6.2, 2.7], [1.4, 5.5]], [[2.0, 2.0], [5.6, 5.1], [4.4, 0.8]]],
                          dtype=torch.double, requires_grad=True)
    positive = torch.tensor([[True, False, True], [True, True, False]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert torch.autograd.gradcheck(lambda c: clicks.click_maps(c, positive, 8, 1.3, valid), (coords,))


def test_click_maps_put_each_click_on_its_channel():
    coords = torch.tensor([[[2.5, 5.5], [6.5, 1.5]]])
    maps = clicks.click_maps(coords, torch.tensor([[True, False]]), 8, 1.0)
    assert maps.shape == (1, 2, 8, 8) and maps.min() >= 0 and maps.max() <= 1
    assert maps[0, 0, 5, 2] == 1 and maps[0, 1, 1, 6] == 1  # (x, y) = (col + 0.5, row + 0.5)
    assert maps[0, 0, 1, 6] < 1e-6 and maps[0, 1, 5, 2] < 1e-6
    none = clicks.click_maps(coords, torch.tensor([[True, False]]), 8, 1.0, valid=torch.tensor([[False, False]]))
    assert none.abs().max() == 0


def test_standard_click_is_the_deepest_pixel_of_the_object():
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 1:8, 1:8] = True  # 7 x 7: the centre pixel (row 4, column 4) is deepest
    coords, positive = clicks.standard_clicks(mask, torch.zeros_like(mask))
    assert coords.tolist() == [[4.5, 4.5]] and positive.tolist() == [True]
    mask[0, 1:8, 1:3] = False  # 7 rows x 5 columns: rows 3-5 tie; the first in row-major order wins
    assert clicks.standard_clicks(mask, torch.zeros_like(mask))[0].tolist() == [[5.5, 3.5]]


def test_standard_click_goes_to_the_largest_error_region_with_its_sign():
    gt = torch.zeros(1, 12, 12, dtype=torch.bool)
    gt[0, 2:10, 2:10] = True
    pred = gt.clone()
    pred[0, 2:4, 2:4] = False  # a 4-pixel false negative
    pred[0, 0:2, 0:12] = True  # a 24-pixel false positive strip: the largest error
    coords, positive = clicks.standard_clicks(gt, pred)
    assert positive.tolist() == [False] and _inside(coords[:, None], ~gt & pred).all()


def test_simulated_clicks_lie_inside_the_object_or_the_error_region():
    scenes = make_shapes(24, size=16, seed=3)
    masks = scenes.masks[:, 0]
    g = torch.Generator().manual_seed(0)
    empty = torch.zeros_like(masks)
    std, _ = clicks.standard_clicks(masks, empty)
    assert _inside(std[:, None], masks).all()
    for sim in (lambda m, p: clicks.user_clicks(m, p, g, 50, edge_bias=0.7), lambda m, p: clicks.random_clicks(m, p, g, 50)):
        coords, positive = sim(masks, empty)
        assert coords.shape == (24, 50, 2) and positive.all() and _inside(coords, masks).all()
        pred = torch.roll(masks, 2, dims=2)  # a shifted prediction: false negatives and false positives
        regions, pos = clicks.largest_error_regions(masks, pred)
        coords, positive = sim(masks, pred)
        assert _inside(coords, regions).all() and torch.equal(positive, torch.from_numpy(pos))


def test_user_clicks_prefer_the_rim_by_the_stated_mixture():
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 3:13, 3:13] = True  # 100 pixels, 36 on the rim (distance to the boundary 1)
    coords, _ = clicks.user_clicks(mask, torch.zeros_like(mask), torch.Generator().manual_seed(0), 4000,
                                   edge_bias=0.5, edge_width=1.0)
    rim = torch.from_numpy(clicks.boundary_distance(mask[0].numpy()) <= 1) & mask[0]
    share = _inside(coords, rim[None]).float().mean().item()
    assert abs(share - (0.5 + 0.5 * 36 / 100)) < 0.03
