"""Tests of companion.data.pianoroll: rolls in key and in their registers, and the drawn masks' shapes."""

from __future__ import annotations

import pytest
import torch

from companion.data import pianoroll


def _rolls(n=12, seed=0):
    return pianoroll.make_rolls(n, generator=torch.Generator().manual_seed(seed))


def test_rolls_are_binary_in_key_and_in_their_registers():
    r = _rolls(40)
    assert r.rolls.shape == (40, 2, 32, 64)
    assert set(r.rolls.unique().tolist()) <= {0.0, 1.0}
    pcs = r.pitch_classes()
    cells = r.rolls.sum(-1)  # (N, 2, P)
    assert (cells * (~r.scale[:, pcs])[:, None].float()).sum() == 0  # every note in the roll's scale
    assert cells[:, 0, :r.split].sum() == 0 and cells[:, 1, r.split:].sum() == 0  # melody above, chords below
    melody_rows = r.rolls[:, 0].sum(1)  # (N, T): one melody note at a time
    assert melody_rows.max() <= 1 and melody_rows.mean() > 0.8
    assert (r.rolls[:, 1].sum(1) > 0).float().mean() > 0.8  # accompaniment nearly always sounding


def test_rolls_are_deterministic_in_the_seed():
    assert torch.equal(_rolls(seed=3).rolls, _rolls(seed=3).rolls)
    assert not torch.equal(_rolls(seed=3).rolls, _rolls(seed=4).rolls)


def test_scale_mask_has_seven_pitch_classes_and_relative_keys_agree():
    assert pianoroll.scale_mask(0, False).sum() == 7
    assert torch.equal(pianoroll.scale_mask(0, False), pianoroll.scale_mask(9, True))  # C major = A minor


def test_gap_masks_blank_one_channel_over_the_span():
    r = _rolls(2)
    context, mask = pianoroll.draw_masks(r, ["melody gap", "accompaniment gap"], span=(16, 48))
    assert mask.shape == r.rolls.shape and mask.dtype == torch.bool
    assert torch.equal(context, r.rolls)  # gaps erase nothing: the region is inpainted, the rest known
    assert (~mask[0, 0, :, 16:48]).all() and mask[0, 1].all() and mask[0, 0, :, :16].all() and mask[0, 0, :, 48:].all()
    assert (~mask[1, 1, :, 16:48]).all() and mask[1, 0].all()


@pytest.mark.parametrize("kind,sign", [("rising", 1), ("falling", -1)])
def test_drawn_bands_follow_their_direction(kind, sign):
    r = _rolls(1)
    context, mask = pianoroll.draw_masks(r, [kind], span=(16, 48), band=2)
    region = ~mask[0, 0]  # (P, T)
    assert mask[0, 1].all() and region[:, :16].sum() == 0 and region[:, 48:].sum() == 0
    rows = torch.arange(32, dtype=torch.float)[:, None]
    centre = (region * rows).sum(0)[16:48] / region.sum(0)[16:48]
    assert (region.sum(0)[16:48] > 0).all() and region.sum(0).max() <= 5  # a band of 2*band+1 rows at most
    assert sign * (centre[-1] - centre[0]) > 5 and (sign * centre.diff() >= 0).all()
    assert context[0, 0, :, 16:48].sum() == 0  # the melody under the drawing is erased
    assert torch.equal(context[0, 1], r.rolls[0, 1])


def test_v_shape_goes_down_then_up():
    r = _rolls(1)
    _, mask = pianoroll.draw_masks(r, ["V"], span=(0, 64), band=1)
    region = (~mask[0, 0]).float()
    centre = (region * torch.arange(32.0)[:, None]).sum(0) / region.sum(0)
    low = centre.argmin()
    assert 24 <= low <= 40 and centre[0] > centre[low] + 5 and centre[-1] > centre[low] + 5


def test_draw_masks_rejects_bad_input():
    r = _rolls(2)
    with pytest.raises(ValueError, match="one mask kind per roll"):
        pianoroll.draw_masks(r, ["rising"])
    with pytest.raises(ValueError, match="mask kind"):
        pianoroll.draw_masks(r, ["rising", "zigzag"])
    with pytest.raises(ValueError, match="span"):
        pianoroll.draw_masks(r, ["rising", "V"], span=(40, 20))
