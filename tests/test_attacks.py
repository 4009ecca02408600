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


def test_pgd_linf_stays_in_its_ball_its_region_and_the_bounds():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g)
    region = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    region[:, :, 2:6, 2:6] = True
    w = torch.randn(3, 8, 8, generator=g)
    eps = 0.05
    for start in (False, True):
        adv, hist = attacks.pgd_linf(lambda a, m: (a * w).sum((1, 2, 3)), x, eps, steps=30, step_size=0.01,
                                     region=region, random_start=start, generator=g)
        delta = adv - x
        assert delta.abs().max() <= eps + 1e-6 and delta.abs().max() > 0.5 * eps
        assert (delta[~region.expand_as(x)] == 0).all()
        assert adv.min() >= 0 and adv.max() <= 1
        assert hist.shape == (30,)
    # a linear loss is maximised by the ball's corner (clipped to the bounds) inside the region
    adv, hist = attacks.pgd_linf(lambda a, m: (a * w).sum(), x, eps, steps=30, step_size=0.01, region=region)
    best = (x + eps * w.sign()).clamp(0, 1)
    assert torch.allclose(adv[region.expand_as(x)], best[region.expand_as(x)], atol=1e-6)
    assert hist[-1] > hist[0]
    low, _ = attacks.pgd_linf(lambda a, m: (a * w).sum(), x, eps, steps=30, step_size=0.01, maximise=False,
                              bounds=None)
    assert torch.allclose(low, x - eps * w.sign(), atol=1e-6)


def test_pgd_linf_averages_the_gradient_over_drawn_masks():
    x = torch.full((1, 4), 0.5)
    draws = []

    def draw(step, j):
        draws.append((step, j))
        m = torch.zeros(1, 4)
        m[0, j] = 1.0  # sample j sees coordinate j only
        return m

    # per-sample gradients +m (coordinates 0, 1) and -3m (coordinate 2): the mean's sign is (+, +, -, 0)
    weights = torch.tensor([1.0, 1.0, -3.0, 0.0])
    adv, _ = attacks.pgd_linf(lambda a, m: (a * m * weights).sum(), x, 0.1, steps=1, step_size=0.1, draw=draw,
                              samples=3)
    assert draws == [(0, 0), (0, 1), (0, 2)]
    assert torch.allclose(adv, torch.tensor([[0.6, 0.6, 0.4, 0.5]]))
