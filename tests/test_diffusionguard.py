"""Tests of DiffusionGuard's pieces (companion.methods.diffusion_editing.diffusionguard) on a small random ToySD."""

from __future__ import annotations

import pytest
import torch

from companion import attacks
from companion.diffusion.gaussian import Schedule
from companion.methods.diffusion_editing import diffusionguard as dg
from companion.models.toy_sd import ToySD


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ToySD(channels=(8, 16), time_dim=16, text_dim=8, heads=2).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def task():
    return dg.edit_task(6, 16, seed=3)


def test_edit_task_keeps_one_object_and_asks_for_another_colour(task):
    assert task.images.shape == (6, 3, 16, 16) and task.keep.shape == (6, 1, 16, 16)
    assert task.keep.flatten(1).any(1).all()
    # outside the object the image is the plain background (plus pixel noise)
    off = (task.images - task.background[:, :, None, None]).abs() * ~task.keep
    assert off.max() < 0.12
    kept_colour = task.captions[:, 0] - 1
    assert (task.new_colour >= 0).all() and (task.new_colour != kept_colour).all()
    assert (task.captions[:, 2] - 1 == task.new_colour).all()


def test_contour_shrink_cuts_dents_into_the_kept_region_only(task):
    g = torch.Generator().manual_seed(0)
    out = dg.contour_shrink(task.keep, g, max_radius=2.0, max_dents=3)
    assert out.dtype == torch.bool and out.shape == task.keep.shape
    assert not (out & ~task.keep).any()  # a subset of the object
    assert out.flatten(1).any(1).all()  # never empty
    assert (out != task.keep).flatten(1).any(1).all()  # every mask got a dent
    again = dg.contour_shrink(task.keep, torch.Generator().manual_seed(0), max_radius=2.0, max_dents=3)
    assert torch.equal(out, again)


def test_unseen_masks_vary_the_kept_region_around_the_object(task):
    m = dg.unseen_masks(task.keep, torch.Generator().manual_seed(1))
    assert tuple(m) == dg.UNSEEN
    keep = task.keep
    assert not (keep & ~m["dilated"]).any() and not (keep & ~m["box"]).any()
    assert not (m["eroded"] & ~keep).any() and not (m["brushed"] & ~keep).any()
    for mask in m.values():
        assert mask.shape == keep.shape and mask.flatten(1).any(1).all()
    assert (m["dilated"].sum() > keep.sum()) and (m["eroded"].sum() < keep.sum())


def test_guard_level_is_the_first_level_of_the_grid():
    sched = Schedule(100)
    assert dg.guard_level(sched, 4) == 75 and dg.guard_level(sched, 10) == 90


def test_the_guard_loss_sees_only_the_kept_pixels(model, task):
    """DiffusionGuard's objective reads the image only through the masked (kept) image: zero gradient outside."""
    x = task.images.clone().requires_grad_(True)
    loss = dg.guard_loss(model, 75, torch.Generator().manual_seed(0))(x, task.keep)
    assert loss.shape == (6,) and (loss > 0).all()
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert (grad * ~task.keep).abs().max() == 0 and grad.abs().max() > 0
    x = task.images.clone().requires_grad_(True)  # AdvDM's denoising loss also reads the noised whole image
    loss = dg.advdm_loss(model, Schedule(100), torch.Generator().manual_seed(0))(x, task.keep)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert loss.shape == (6,) and (grad * ~task.keep).abs().max() > 0


def test_protection_stays_in_the_ball_on_the_object(model, task):
    eps = 8 / 255
    g = torch.Generator().manual_seed(0)
    adv, hist = attacks.pgd_linf(dg.guard_loss(model, 75, g), task.images, eps, 3, 2 / 255, region=task.keep,
                                 draw=lambda s, j: dg.contour_shrink(task.keep, g))
    delta = adv - task.images
    assert delta.abs().max() <= eps + 1e-6 and (delta * ~task.keep).abs().max() == 0 and hist.shape == (3,)
    rnd = dg.random_sign(task.images, task.keep, eps, g)
    d = (rnd - task.images).abs()
    assert d.max() <= eps + 1e-6 and (d * ~task.keep).max() == 0


def test_edit_is_deterministic_in_its_start_and_matches_for_the_same_image(model, task):
    sched = Schedule(100)
    start = torch.randn(task.images.shape, generator=torch.Generator().manual_seed(0))
    a = dg.edit(model, sched, task.images, task.keep, task.captions, start, steps=4, guidance=2.0)
    b = dg.edit(model, sched, task.images, task.keep, task.captions, start, steps=4, guidance=2.0, batch_size=4)
    assert a.shape == task.images.shape and a.min() >= 0 and a.max() <= 1
    assert torch.allclose(a, b, atol=1e-5)
    fill = ~task.keep
    assert dg.region_rmse(a, b, fill).max() < 1e-4


def test_chain_loss_differentiates_the_whole_edit(model, task):
    x = task.images.clone().requires_grad_(True)
    loss = dg.chain_loss(model, Schedule(100), task.captions, 3, 2.0, torch.Generator().manual_seed(0))(x, task.keep)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert loss.shape == (6,) and (loss <= 0).all() and grad.abs().max() > 0
    assert (grad * ~task.keep).abs().max() == 0


def test_region_rmse_and_added_colour():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0, :, 0, 0] = 0.5  # one pixel of 16 differs by 0.5 in every channel
    region = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    assert torch.allclose(dg.region_rmse(a, b, region), torch.tensor([0.125, 0.0]))
    corner = torch.zeros_like(region)
    corner[:, :, 0, 0] = True
    assert torch.allclose(dg.region_rmse(a, b, corner), torch.tensor([0.5, 0.0]))
    assert dg.region_rmse(a, b, torch.zeros_like(region)).eq(0).all()
    img = torch.full((2, 3, 4, 4), 0.5)
    img[0, :, 1:3, 1:3] = torch.tensor([0.9, 0.15, 0.1])[:, None, None]  # red (palette 0) drawn in image 0 only
    bg = torch.full((2, 3), 0.5)
    assert dg.added_colour(img, region, bg).tolist() == [0, -1]
