import pytest
import torch

from companion import audio
from companion.methods.audio import streamvoice as sv

P, T, LV, K, U = 4, 10, 2, 8, 6


def world_and_split(n_speakers=3, per_speaker=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = sv.transitions(U, 2, g)
    world = sv.SpeechWorld(U, 4, 2, g)
    split = sv.make_split(world, probs, world.speakers(n_speakers, g), per_speaker, T, P, g)
    return world, probs, split


def packed_split(seed=0):
    world, probs, split = world_and_split(seed=seed)
    codec = audio.ResidualKMeans(K, LV, seed=0).fit(split.frames.reshape(-1, 4))
    return split, sv.pack(split, codec)


def test_transitions_rows_are_distributions_without_self_loops():
    probs = sv.transitions(7, 3, torch.Generator().manual_seed(0))
    assert torch.allclose(probs.sum(1), torch.ones(7))
    assert (probs.diagonal() == 0).all()
    assert ((probs > 0).sum(1) == 3).all()
    with pytest.raises(ValueError):
        sv.transitions(4, 4, torch.Generator())


def test_unit_chains_segments_and_boundaries():
    g = torch.Generator().manual_seed(1)
    c = sv.unit_chains(50, 30, sv.transitions(U, 2, g), g, min_dur=2, max_dur=4)
    length = c.position + c.to_boundary  # the segment's duration, seen from each of its frames
    assert ((length >= 2) & (length <= 4)).all()
    last = c.to_boundary[:, :-1] == 1
    assert (c.units[:, 1:][last] == c.next[:, :-1][last]).all()  # after a segment's last frame comes the next unit
    assert (c.units[:, 1:][~last] == c.units[:, :-1][~last]).all()  # inside a segment the unit stays
    assert (c.next != c.units).all() and (c.prev != c.units).all()
    assert (c.prev[:, 0] == -1).all()


def test_frames_depend_on_the_next_unit_only_near_the_boundary():
    g = torch.Generator().manual_seed(2)
    world = sv.SpeechWorld(U, 4, 2, g, decay=0.0)
    c = sv.unit_chains(40, 20, sv.transitions(U, 2, g), g)
    effect = sv.next_unit_effect(world, c, 4)
    assert effect[0] > 0.1 and (effect[1:] == 0).all()  # decay 0: only a segment's last frame anticipates
    effect = sv.next_unit_effect(sv.SpeechWorld(U, 4, 2, torch.Generator().manual_seed(2), decay=0.5), c, 4)
    assert (effect[:-1] > effect[1:]).all()


def test_speakers_change_frames_not_content():
    world, probs, split = world_and_split()
    g = torch.Generator().manual_seed(0)
    a = world.frames(split.chains, torch.zeros(len(split), 2), g, noise=0.0)
    b = world.frames(split.chains, torch.ones(len(split), 2), g, noise=0.0)
    assert not torch.allclose(a, b)
    same = world.frames(split.chains, torch.zeros(len(split), 2), g, noise=0.0)
    assert torch.equal(a, same)


def test_pack_unpack_roundtrip():
    split, packed = packed_split()
    pu, pc, u, c = sv.unpack(packed, P, T, LV)
    assert torch.equal(pu, split.prompt_units) and torch.equal(u, split.chains.units)
    assert pc.shape == (len(split), P, LV) and c.shape == (len(split), T, LV)
    assert packed.shape == (len(split), P + P * LV + T + T * LV)


def test_window_mean():
    h = torch.randn(2, 6, 3)
    out = sv.window_mean(h, 2)
    for t in range(6):
        assert torch.allclose(out[:, t], h[:, t:t + 3].mean(1), atol=1e-6)


@pytest.mark.parametrize("streaming", [True, False])
def test_layouts_are_causal(streaming):
    """The prediction of a_t never sees a_t, a later frame, or (streaming) a later unit."""
    torch.manual_seed(0)
    split, packed = packed_split()
    model = sv.AlternatingLM(U, K, LV, P, T, streaming, d=16, n_layer=2, n_head=2).eval()
    logits, _ = model(packed[:4])
    t = 5
    changed = packed[:4].clone()
    start = P + P * LV + T
    changed[:, start + t * LV:] = (changed[:, start + t * LV:] + 1) % K  # a_t … a_T
    if streaming:
        changed[:, P + P * LV + t + 1:start] = (changed[:, P + P * LV + t + 1:start] + 1) % U  # u_{t+1} … u_T
    after, _ = model(changed)
    assert torch.allclose(logits[:, :t + 1], after[:, :t + 1], atol=1e-5)
    assert not torch.allclose(logits[:, t + 1:], after[:, t + 1:])
    if not streaming:  # the non-streaming model reads the whole source before the first frame
        future_unit = packed[:4].clone()
        future_unit[:, start - 1] = (future_unit[:, start - 1] + 1) % U
        assert not torch.allclose(model(future_unit)[0][:, 0], logits[:, 0])


def test_objective_masking_and_foresight():
    torch.manual_seed(0)
    split, packed = packed_split()
    teacher = sv.UnitTeacher(U, T, d=8, n_layer=1, n_head=2)
    model = sv.AlternatingLM(U, K, LV, P, T, True, d=16, n_layer=1, n_head=2, foresight_dim=8)
    out = sv.StreamVoiceObjective(P, T, LV, mask_rate=0.5, teacher=teacher, horizon=2, seed=0)(model, packed, None)
    assert torch.isfinite(out["loss"]) and out["foresight"] > 0
    assert torch.allclose(out["loss"], out["ce"] + out["foresight"])
    plain = sv.StreamVoiceObjective(P, T, LV)(model, packed, None)
    assert set(plain) == {"loss", "ce"}
    t_out = sv.TeacherObjective(0.3, 0)(teacher, split.chains.units, None)
    assert torch.isfinite(t_out["loss"])


def test_convert_never_reads_the_true_codes_and_copy_baseline():
    torch.manual_seed(0)
    split, packed = packed_split()
    model = sv.AlternatingLM(U, K, LV, P, T, True, d=16, n_layer=1, n_head=2)
    scrambled = packed.clone()
    start = P + P * LV + T
    scrambled[:, start:] = torch.randint(0, K, scrambled[:, start:].shape)
    assert torch.equal(sv.convert(model, packed), sv.convert(model, scrambled))
    hits = sv.correct(model, packed)
    assert hits.shape == (len(split), T, LV) and hits.dtype == torch.bool
    const = packed.clone()
    const[:, P:P + P * LV] = 3
    const[:, start:] = 3
    assert sv.copy_correct(const, P, T, LV).all()
    err = sv.by_boundary(sv.copy_correct(const, P, T, LV), split.chains.to_boundary, 2)
    assert torch.equal(err, torch.zeros(2))
