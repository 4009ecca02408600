"""Tests of companion.methods.audio.pictures_of_midi: the inpainting metrics on hand-made rolls."""

from __future__ import annotations

import math

import torch

from companion.data import pianoroll
from companion.methods.audio import pictures_of_midi as pom


def _blank(p=12, t=8):
    return torch.zeros(1, 2, p, t, dtype=torch.bool), torch.ones(1, 2, p, t, dtype=torch.bool)


def test_sequence_round_trip():
    x = torch.randn(3, 2, 5, 7)
    seq = pom.to_sequence(x)
    assert seq.shape == (3, 10, 7) and torch.equal(pom.from_sequence(seq), x)
    assert torch.equal(pom.notes(pom.to_signal(torch.tensor([0.0, 1.0]))), torch.tensor([False, True]))


def test_density_and_coverage_count_notes_inside_the_region_only():
    notes, mask = _blank()
    mask[0, 0, :, 2:6] = False  # a 4-step gap in the melody channel
    notes[0, 0, 3, 2] = notes[0, 0, 7, 2] = notes[0, 0, 4, 3] = True  # 3 cells in 2 of the 4 steps
    notes[0, 0, 5, 0] = notes[0, 1, 5, 3] = True  # outside the region: not counted
    assert pom.density(notes, mask).item() == 3 / 4
    assert pom.coverage(notes, mask).item() == 2 / 4


def test_centroid_correlation_follows_the_drawn_shape():
    notes, mask = _blank(p=12, t=8)
    for t in range(8):
        mask[0, 0, t:t + 3, t] = False  # a rising band, centre row t + 1
    rising = notes.clone()
    falling = notes.clone()
    for t in range(8):
        rising[0, 0, t + 1, t] = True
        falling[0, 0, 11 - t, t] = True  # outside the band mostly: only counted inside the region
    assert math.isclose(pom.centroid_correlation(rising, mask).item(), 1.0, abs_tol=1e-6)
    sparse = notes.clone()
    sparse[0, 0, 1, 0] = sparse[0, 0, 2, 1] = True  # two steps only: not enough to follow a shape
    assert pom.centroid_correlation(sparse, mask).item() == 0.0
    down = notes.clone()
    for t in range(8):
        down[0, 0, t + 2 - (t % 3 == 0) * 2, t] = True
    assert pom.centroid_correlation(down, mask).item() < 1.0
    assert pom.coverage(falling, mask).item() < 1.0


def test_in_key_share_of_a_scale_is_one_and_of_a_chromatic_run_seven_twelfths():
    p, t = 24, 24
    pcs = torch.arange(p) % 12  # row r has pitch class r (low pitch C)
    scale = pianoroll.scale_mask(0, False)[None]  # C major
    region = torch.zeros(1, 2, p, t, dtype=torch.bool)
    notes = torch.zeros(1, 2, p, t, dtype=torch.bool)
    for k, r in enumerate([r for r in range(p) if scale[0, r % 12]]):
        notes[0, 0, r, k] = True  # a C-major scale, one note per step
    assert pom.in_key_share(notes, region, scale, pcs).item() == 1.0
    chromatic = torch.zeros_like(notes)
    chromatic[0, 0, torch.arange(12), torch.arange(12)] = True
    assert math.isclose(pom.in_key_share(chromatic, region, scale, pcs).item(), 7 / 12, rel_tol=1e-6)
    assert math.isclose(pom.chance_in_key(), 7 / 12)
    assert math.isnan(pom.in_key_share(torch.zeros_like(notes), region, scale, pcs).item())


def test_in_key_share_of_generated_rolls_is_one():
    r = pianoroll.make_rolls(6, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(r.rolls, dtype=torch.bool)
    assert (pom.in_key_share(r.rolls.bool(), mask, r.scale, r.pitch_classes()) == 1).all()


def test_estimate_scale_recovers_the_key_of_the_accompaniment():
    r = pianoroll.make_rolls(20, generator=torch.Generator().manual_seed(2))
    est = pom.estimate_scale(r.rolls[:, 1].bool(), r.pitch_classes())
    assert (est == r.scale).all(-1).float().mean() >= 0.8  # triads of I, IV, V, vi nearly always pin the key


def test_border_continuity_counts_notes_carried_across_the_time_border():
    notes, mask = _blank(p=4, t=8)
    mask[0, 0, :, 3:6] = False  # region: steps 3..5; borders between steps 2|3 and 5|6
    notes[0, 0, 1, 1:5] = True  # a note crossing the left border
    notes[0, 0, 2, 6:8] = True  # a note starting after the right border, nothing before it inside
    assert pom.border_continuity(notes, mask).item() == 0.5
    assert math.isnan(pom.border_continuity(torch.zeros_like(notes), mask).item())


def test_render_puts_high_pitches_on_top_and_shades_the_region():
    roll = torch.zeros(2, 4, 3)
    roll[0, 3, 0] = 1  # the highest melody note
    mask = torch.ones(2, 4, 3, dtype=torch.bool)
    mask[1, :, 2] = False
    img = pom.render(roll, mask)
    assert img.shape == (3, 4, 3) and img[0, 0, 0] == 1 and img[2, :, 2].gt(0).all() and img[2, :, :2].eq(0).all()


def _zero_denoiser(x, t, cond=None):
    return torch.zeros_like(x)


def test_inpaint_keeps_known_cells_exact_and_arms_share_their_noise():
    from companion.diffusion import gaussian

    r = pianoroll.make_rolls(5, pitches=24, steps=32, bar=8, split=12, generator=torch.Generator().manual_seed(0))
    context, mask = pianoroll.draw_masks(r, list(pianoroll.MASK_KINDS), span=(8, 24), band=2)
    sched = gaussian.Schedule(20)
    plain = pom.inpaint(_zero_denoiser, sched, context, mask, steps=5, seed=3)
    assert plain.shape == context.shape and plain.dtype == torch.bool
    assert torch.equal(plain[mask], context.bool()[mask])  # known cells (and the erased melody) come back exactly
    again = pom.inpaint(_zero_denoiser, sched, context, mask, steps=5, seed=3, resample=1)
    assert torch.equal(plain, again)
    noisy = pom.inpaint(_zero_denoiser, sched, context, mask, steps=5, seed=3, resample=3)
    assert torch.equal(noisy[mask], context.bool()[mask])


def test_evaluations_count_repaint_descents():
    assert pom.evaluations(25) == 25
    assert pom.evaluations(25, resample=4, jump_length=1) == 25 + 3 * 24
    assert pom.evaluations(10, resample=2, jump_length=5) > 10
