import math

import torch

from companion import masks
from companion.data import speech
from companion.methods.audio import speech_mlm_targets as smt
from companion.models.msm import MSMEncoder


def test_pick_voices_is_a_fixed_draw_of_distinct_english_voices():
    a, b = smt.pick_voices(9), smt.pick_voices(9)
    assert a == b and len(set(a)) == 9 and set(a) <= set(speech.ENGLISH_VOICES)
    assert sorted(smt.pick_voices(len(speech.ENGLISH_VOICES))) == sorted(speech.ENGLISH_VOICES)


def test_centre_speech_cuts_trailing_silence_and_centres_the_voiced_part():
    waves = torch.zeros(2, 100)
    waves[0, :10] = 1.0  # voiced at the start, then silence
    waves[1, 20:80] = 0.5  # longer than the window: centred crop
    out = smt.centre_speech(waves, 30)
    assert out.shape == (2, 30)
    assert torch.equal(out[0].nonzero().flatten(), torch.arange(10, 20))
    assert bool((out[1] == 0.5).all())


def test_held_out_split_keeps_test_clips_out_of_every_training_set():
    text = torch.arange(6).repeat_interleave(4)  # 6 texts x 4 voices
    voice = torch.arange(4).repeat(6)
    s = smt.held_out_split(text, voice, 0.5, torch.Generator().manual_seed(0))
    assert len(s.held_texts) == 3 and len(s.held_voices) == 2
    held_t, held_v = torch.isin(text, torch.tensor(s.held_texts)), torch.isin(voice, torch.tensor(s.held_voices))
    assert torch.equal(s.test, held_t & held_v) and int(s.test.sum()) == 6
    assert not (s.test & (s.word_train | s.speaker_train | s.pretrain)).any()
    assert torch.equal(s.word_train, ~held_v) and torch.equal(s.speaker_train, ~held_t)
    assert torch.equal(s.pretrain, ~s.test)
    # the word probe sees every word, the speaker probe every voice
    assert set(text[s.word_train].tolist()) == set(range(6)) and set(voice[s.speaker_train].tolist()) == set(range(4))


def small_encoder(heads=(8,)):
    torch.manual_seed(0)
    return MSMEncoder(n_input=6, heads=heads, d=16, n_layer=1, n_head=2, max_frames=16)


def test_arms_share_their_initial_body_whatever_their_heads():
    one, four = small_encoder((8,)), small_encoder((8, 8, 8, 8))
    a, b = one.state_dict(), four.state_dict()
    body = [k for k in a if not k.startswith("heads.")]
    assert body and all(torch.equal(a[k], b[k]) for k in body)
    assert torch.equal(a["heads.0.weight"], b["heads.0.weight"])


def test_masked_prediction_is_seeded_and_trains_the_encoder():
    model = small_encoder((8, 8))
    x, y = torch.randn(4, 12, 6), torch.randint(0, 8, (4, 6, 2))
    out = smt.MaskedPrediction(0.5, 2, seed=3)(model, x, y)
    out["loss"].backward()
    assert model.mask_embedding.grad is not None and model.mask_embedding.grad.abs().sum() > 0
    again = smt.MaskedPrediction(0.5, 2, seed=3)(model, x, y)
    assert torch.allclose(out["loss"], again["loss"])


def test_masked_accuracy_scores_only_the_masked_tokens():
    model = small_encoder((8, 8)).eval()
    x = torch.randn(3, 12, 6)
    keep = masks.frame_spans(3, 6, 0.5, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        own = torch.stack([lg.argmax(-1) for lg in model(x, keep)], dim=-1)  # (3, 6, 2): the model's own guesses
    acc = smt.masked_accuracy(model, x, own, 0.5, 2, seed=5)
    assert acc.shape == (3, 2) and torch.allclose(acc, torch.ones(3, 2))
    wrong = torch.where(keep[..., None], own, (own + 1) % 8)  # wrong exactly at the masked tokens
    assert torch.allclose(smt.masked_accuracy(model, x, wrong, 0.5, 2, seed=5), torch.zeros(3, 2))


def test_denoise_probe_is_per_clip_and_exact_for_a_linear_map():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=g)
    tr_x, te_x = torch.randn(40, 6, 5, generator=g), torch.randn(7, 6, 5, generator=g)
    mse = smt.denoise_probe(tr_x, tr_x @ w, te_x, te_x @ w, alpha=1e-8)
    assert mse.shape == (7,) and float(mse.max()) < 1e-6
    noisy = smt.denoise_probe(tr_x, tr_x @ w, te_x, te_x @ w + 1.0, alpha=1e-8)
    assert torch.allclose(noisy, torch.ones(7), atol=1e-3)


def test_mutual_information_in_bits():
    labels = torch.arange(4).repeat(5)  # 20 clips, 4 balanced labels
    same = labels[:, None].expand(20, 3)  # every frame's code is its clip's label
    assert math.isclose(smt.mutual_information(same, labels), 2.0, rel_tol=1e-6)
    constant = torch.zeros(20, 3, dtype=torch.long)
    assert smt.mutual_information(constant, labels) == 0.0


def test_task_average_weighs_the_three_probes_alike():
    word, speaker = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    mse = torch.tensor([0.0, 2.0])
    assert torch.allclose(smt.task_average(word, speaker, mse, reference=2.0), torch.tensor([1.0, 1 / 3]))


def test_probe_bars_draws_one_panel_per_probe():
    scores = {"word": {"a": (0.5, 0.4, 0.6), "b": (0.7, 0.6, 0.8)}, "mse": {"a": (1.0, 0.9, 1.1), "b": (0.8, 0.7, 0.9)}}
    fig = smt.probe_bars(scores, {"word": {"chance": 0.1}})
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)
