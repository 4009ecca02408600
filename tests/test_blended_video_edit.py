"""blended_video_edit: clips move by their known motion, the flicker score, the word map and automatic mask, and
the blending modes' by-construction properties (an empty edit mask returns the source exactly). The DDIM
inversion round trip itself is tested in tests/test_diffusion_gaussian.py."""

import pytest
import torch

from companion.data import scenes
from companion.diffusion import control
from companion.diffusion.gaussian import Schedule
from companion.methods.diffusion_editing import blended_video_edit as bve
from companion.models.toy_sd import ToySD, to_model


@pytest.fixture(scope="module")
def clips():
    return bve.make_clips(6, 4, size=16, speed=1, seed=3)


def test_clips_move_by_their_velocity_and_the_edit_swaps_one_colour_word(clips):
    c, f = clips.frames.shape[:2]
    assert clips.frames.shape == (6, 4, 3, 16, 16) and clips.objects.shape == (6, 4, 2, 16, 16)
    assert clips.velocity.abs().eq(1).all()
    for i in range(c):
        dy = int(clips.velocity[i, 1])
        for j in range(f - 1):  # the right object is drawn on top: it moves whole, by its velocity
            now, nxt = clips.objects[i, j, 1], clips.objects[i, j + 1, 1]
            assert now.sum() > 0 and torch.equal(torch.roll(now, dy, dims=0), nxt)
            assert clips.objects[i, j, 0].sum() > 0
    changed = clips.edited != clips.captions
    assert changed.sum(1).eq(1).all()
    assert changed[torch.arange(c), 2 * clips.slot].all()
    assert (clips.edited[torch.arange(c), 2 * clips.slot] == clips.new_colour + bve.COLOUR_ID0).all()
    assert not (clips.colours == clips.new_colour[:, None]).any()  # a colour neither object has
    whole = clips.objects[:, :, 0].sum((2, 3)).float()  # the left object, possibly hidden by the right one
    mostly_hidden = (whole / whole.max(1, keepdim=True).values).min(1).values < 0.75
    assert (clips.slot[mostly_hidden] == 1).all()
    again = bve.make_clips(6, 4, size=16, speed=1, seed=3)
    assert torch.equal(again.frames, clips.frames) and torch.equal(again.edited, clips.edited)


def test_edited_object_and_velocity_pick_the_edited_slot(clips):
    gt = clips.edited_object().view(6, 4, 16, 16)
    for i in range(6):
        assert torch.equal(gt[i], clips.objects[i, :, int(clips.slot[i])])
    assert torch.equal(clips.edited_velocity(), clips.velocity[torch.arange(6), clips.slot])


def test_flicker_is_zero_for_an_exactly_moving_region_and_sees_a_colour_change(clips):
    dy = clips.edited_velocity()
    first, region0 = clips.frames[:, 0], clips.edited_object().view(6, 4, 16, 16)[:, 0]
    moving = torch.stack([torch.stack([torch.roll(first[i], int(dy[i]) * j, dims=1) for j in range(4)])
                          for i in range(6)])
    region = torch.stack([torch.stack([torch.roll(region0[i], int(dy[i]) * j, dims=0) for j in range(4)])
                          for i in range(6)])
    assert bve.flicker(moving, region, dy).abs().max() < 1e-6
    flashed = moving.clone()
    flashed[:, 2] = flashed[:, 2] + 0.1 * region[:, 2, None]  # frame 2 brighter inside the object
    # pairs (1, 2) and (2, 3) each differ by 0.1 over the region: mean over 3 pairs = 0.2 / 3
    assert torch.allclose(bve.flicker(flashed, region, dy), torch.full((6,), 0.2 / 3), atol=1e-5)


def test_word_map_picks_the_token_and_the_auto_mask_covers_its_peak():
    n, s = 2, 4
    fine = torch.full((n, 256, s), 0.01)
    fine[0, 5 * 16 + 7, 1] = 5.0   # image 0, word 1 peaks at (5, 7)
    fine[1, 10 * 16 + 2, 3] = 5.0  # image 1, word 3 peaks at (10, 2)
    coarse = torch.full((n, 64, s), 0.01)
    coarse[0, 2 * 8 + 3, 1] = 5.0
    coarse[1, 5 * 8 + 1, 3] = 5.0
    token = torch.tensor([1, 3])
    word = bve.word_map([fine, coarse], token, 16)
    assert word.shape == (n, 16, 16) and torch.allclose(word.sum((1, 2)), torch.ones(n))
    other = bve.word_map([fine, coarse], torch.tensor([0, 0]), 16)
    assert torch.allclose(other, torch.full_like(other, 1 / 256))  # a flat word spreads evenly
    mask = bve.auto_mask(word, 0.5, dilate=1, norm="max")
    assert mask[0, 5, 7] and mask[1, 10, 2]
    assert mask.sum((1, 2)).max() < 40
    assert torch.equal(bve.auto_mask(word, 0.5, dilate=0, norm="max") & mask, bve.auto_mask(word, 0.5, dilate=0, norm="max"))
    floor = word + 1.0  # a constant floor under the map: min-max normalisation ignores it, max normalisation not
    assert torch.equal(bve.auto_mask(floor, 0.5, dilate=1, norm="minmax"), bve.auto_mask(word, 0.5, dilate=1))
    assert bve.auto_mask(floor, 0.5, dilate=1, norm="max").all()
    with pytest.raises(ValueError):
        bve.auto_mask(word, 0.5, norm="mean")
    region = torch.zeros(n, 16, 16, dtype=torch.bool)
    region[0, 5, 7] = True
    assert control.mass_inside(word, region)[0] > control.mass_inside(word, region)[1]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = ToySD(channels=(8, 16), time_dim=16, text_dim=8, heads=2).eval()
    clips = bve.make_clips(2, 3, size=16, seed=1)
    x0 = to_model(clips.flat(clips.frames))
    src, tgt = clips.per_frame(clips.captions), clips.per_frame(clips.edited)
    sched = Schedule(40)
    inverted, word = bve.invert(model, x0, src, sched, 8, clips.per_frame(2 * clips.slot))
    return model, sched, x0, tgt, inverted, word


def test_invert_returns_every_level_and_a_normalised_word_map(tiny):
    model, sched, x0, tgt, inverted, word = tiny
    assert sorted(inverted) == [-1, *range(0, 40, 5)]
    assert torch.equal(inverted[-1], x0)
    assert word.shape == (6, 16, 16) and torch.allclose(word.sum((1, 2)), torch.ones(6))
    with pytest.raises(ValueError):
        bve.level_lookup(list(inverted.values())[:-1], sched, 8)


@pytest.mark.parametrize("background", ["random", "inverted"])
def test_an_empty_edit_mask_returns_the_source_exactly(tiny, background):
    model, sched, x0, tgt, inverted, _ = tiny
    nothing = torch.zeros(x0.shape[0], 16, 16, dtype=torch.bool)
    out = bve.edit(model, sched, x0, tgt, steps=8, guidance=2.0, background=background, mask=nothing,
                   inverted=inverted, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, x0)


def test_blending_keeps_the_outside_and_a_full_mask_equals_unmasked_editing(tiny):
    model, sched, x0, tgt, inverted, _ = tiny
    mask = torch.zeros(x0.shape[0], 16, 16, dtype=torch.bool)
    mask[:, 4:10, 4:10] = True
    out = bve.edit(model, sched, x0, tgt, steps=8, guidance=2.0, background="inverted", mask=mask,
                   inverted=inverted)
    assert torch.equal(out[:, :, ~mask[0]], x0[:, :, ~mask[0]])
    assert not torch.equal(out[:, :, mask[0]], x0[:, :, mask[0]])
    full = torch.ones_like(mask)
    blended = bve.edit(model, sched, x0, tgt, steps=8, guidance=2.0, background="inverted", mask=full,
                       inverted=inverted)
    plain = bve.edit(model, sched, x0, tgt, steps=8, guidance=2.0, background="none", inverted=inverted)
    assert torch.allclose(blended, plain)


def test_edit_checks_its_arguments(tiny):
    model, sched, x0, tgt, inverted, _ = tiny
    with pytest.raises(ValueError, match="background"):
        bve.edit(model, sched, x0, tgt, steps=8, guidance=1.0, background="noise", inverted=inverted)
    with pytest.raises(ValueError, match="mask"):
        bve.edit(model, sched, x0, tgt, steps=8, guidance=1.0, background="inverted", inverted=inverted)
    with pytest.raises(ValueError, match="inversion"):
        bve.edit(model, sched, x0, tgt, steps=8, guidance=1.0, background="none")


def test_make_clips_refuses_paths_that_leave_the_image():
    with pytest.raises(ValueError):
        bve.make_clips(4, 12, size=16, speed=1)  # 11 px of travel: no object of radius >= 3.2 px fits
    assert scenes.caption_text(bve.make_clips(1, 2).edited[0]).count(" ") == 3
