"""Tests of companion.attacks: click optimisation on continuous coordinates, projected inside a region."""

from __future__ import annotations

import torch

from companion import attacks


def _region():
    r = torch.zeros(1, 10, 10, dtype=torch.bool)
    r[0, 2:8, 3:6] = True  # rows 2..7, columns 3..5
    return r


def test_project_inside_keeps_inside_points_and_snaps_outside_ones_to_the_nearest_pixel_centre():
    r = _region().expand(3, -1, -1)
    coords = torch.tensor([[4.2, 5.9], [9.3, 4.4], [-3.0, 0.2]])
    out = attacks.project_inside(coords, r)
    assert torch.equal(out[0], coords[0])
    assert out[1].tolist() == [5.5, 4.5] and out[2].tolist() == [3.5, 2.5]


def test_optimise_clicks_finds_the_extremes_of_a_smooth_score_and_stays_inside():
    r = _region()
    target = torch.tensor([[20.0, 20.0]])  # the score falls with the distance to a point outside the region

    def score(c):
        s = -((c - target) ** 2).sum(1)
        return s, s.detach()

    start = torch.tensor([[4.5, 4.5]])
    best_c, best = attacks.optimise_clicks(score, start, r, steps=20, step_size=2.0, maximise=True)
    worst_c, worst = attacks.optimise_clicks(score, start, r, steps=20, step_size=2.0, maximise=False)
    assert attacks.project_inside(best_c, r).equal(best_c) and attacks.project_inside(worst_c, r).equal(worst_c)
    assert best_c[0, 0] >= 5.0 and best_c[0, 1] >= 7.0  # the corner nearest the target (5.x, 7.x)
    assert worst_c[0, 0] < 4.0 and worst_c[0, 1] < 3.0  # the far corner
    assert best.item() == score(best_c)[1].item() and worst.item() < score(start)[1].item() < best.item()
