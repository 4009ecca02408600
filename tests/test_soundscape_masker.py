"""Soundscape masker/gain selection: feature-domain mixing, the listener, the predictor's input and the scorers."""

import math

import pytest
import torch

from companion import audio
from companion.eval import count_flops
from companion.methods.audio import soundscape_masker as sm

S = 8000  # 0.5 s


@pytest.fixture(scope="module")
def sounds():
    g = torch.Generator().manual_seed(0)
    listener = sm.Listener()
    speech = torch.randn(4, S, generator=g) * torch.hann_window(S)  # word-like blobs stand in for espeak clips
    scapes = sm.soundscapes(6, S, sm.speech_streams(speech, 8, S, g), g)
    bank = sm.maskers(2, S, g, listener)
    return listener, scapes, bank


def test_soundscapes_and_maskers_have_their_kinds_and_levels(sounds):
    listener, scapes, bank = sounds
    assert scapes.waves.shape == (6, S) and scapes.kind.tolist() == [0, 1, 2, 0, 1, 2]
    level = 20 * torch.log10(scapes.waves.pow(2).mean(1).sqrt())
    assert torch.allclose(level, scapes.level_db, atol=1e-3)
    assert ((scapes.level_db >= -38) & (scapes.level_db <= -22)).all()
    assert bank.kind.tolist() == [0, 0, 1, 1, 2, 2]
    assert bank.names() == ["bird 1", "bird 2", "water 1", "water 2", "music 1", "music 2"]


def test_maskers_are_calibrated_to_equal_loudness(sounds):
    listener, _, bank = sounds
    loud = listener.loudness(listener.band_power(bank.waves))
    white = listener.loudness(listener.band_power(torch.randn(1, 64000, generator=torch.Generator().manual_seed(1))
                                                  * 10 ** (-40 / 20)))
    assert torch.allclose(loud, loud[0].expand_as(loud), rtol=1e-4)
    assert loud[0] == pytest.approx(white[0].item(), rel=0.02)


def test_speech_streams_concatenate_clips():
    clips = torch.arange(3.0)[:, None].expand(3, 4)
    out = sm.speech_streams(clips, 5, 10, torch.Generator().manual_seed(0))
    assert out.shape == (5, 10)
    assert all(len(set(row[i:i + 4].tolist())) == 1 for row in out for i in (0, 4))  # whole clips in order


def test_feature_grid_is_power_addition_and_matches_waveform_mixing_on_average(sounds):
    _, scapes, bank = sounds
    fb = audio.mel_filterbank(40)
    gains = torch.tensor([-6.0, 0.0, 6.0])
    own_s = audio.power_spectrogram(scapes.waves[:1]) @ fb
    own_m = audio.power_spectrogram(bank.waves) @ fb
    approx = sm.feature_grid(own_s[0], own_m, gains)
    assert approx.shape == (len(bank), 3, own_s.shape[1], 40)
    assert torch.allclose(approx[3, 2], own_s[0] + 10 ** (6 / 10) * own_m[3], rtol=1e-5)
    exact = sm.mix_grid(scapes.waves[0], bank.waves, gains, {"mel": fb})["mel"]
    assert torch.allclose(sm.mix_grid(scapes.waves[0], bank.waves[:1], gains[:1], {"m": fb})["m"][0, 0],
                          audio.mel_power(scapes.waves[:1] + 10 ** (-6 / 20) * bank.waves[:1])[0], rtol=1e-4)
    # uncorrelated sources: the cross term averages out, so the mean powers agree closely
    ratio = exact.sum(dim=(-2, -1)) / approx.sum(dim=(-2, -1))
    assert ((ratio - 1).abs() < 0.1).all()
    assert torch.allclose(sm.gained(own_m, gains)[:, 1], own_m)


def test_listener_loudness_is_a_power_law_and_masking_lowers_partial_loudness(sounds):
    listener, scapes, bank = sounds
    p = listener.band_power(scapes.waves[:1])
    assert listener.loudness(4 * p).item() == pytest.approx(4 ** 0.23 * listener.loudness(p).item(), rel=1e-5)
    # silence as a masker leaves the soundscape fully audible and the score equals "no masker"
    zero = torch.zeros_like(p)
    alone = listener.alone(p, scapes.kind[:1])
    assert listener.pleasantness(p, p, zero, scapes.kind[:1], bank.kind[:1]).item() == pytest.approx(alone.item())
    # a louder masker masks more: the soundscape's partial loudness N_mix - N_masker falls with the gain
    m = listener.band_power(bank.waves[2:3])  # water: broadband
    partial = [(listener.loudness(p + g * m) - listener.loudness(g * m)).item() for g in (0.1, 1.0, 10.0)]
    assert partial[0] > partial[1] > partial[2]


def test_listener_scores_stay_in_range_and_ratings_are_noisy(sounds):
    listener, scapes, bank = sounds
    fbs = {"l": listener.filterbank()}
    gains = torch.linspace(-12, 12, 5)
    mixed = sm.mix_grid(scapes.waves[1], bank.waves, gains, fbs)["l"]
    own_s, own_m = listener.band_power(scapes.waves[1:2])[0], listener.band_power(bank.waves)
    p = listener.pleasantness(mixed, own_s, sm.gained(own_m, gains), scapes.kind[1], bank.kind[:, None])
    assert p.shape == (len(bank), 5) and (p.abs() < 1).all()
    r = listener.rate(p, torch.Generator().manual_seed(0))
    assert (r != p).any() and (r.abs() <= 1).all()


def test_summary_is_mean_and_population_std_over_time():
    x = torch.randn(2, 3, 50, 4, dtype=torch.float64)
    s = sm.summary(x)
    assert torch.allclose(s[..., :4], x.mean(-2)) and torch.allclose(s[..., 4:], x.std(-2, unbiased=False))


def test_rate_grid_shapes_and_scorers_agree_with_it(sounds):
    listener, scapes, bank = sounds
    fb = audio.mel_filterbank(16)
    gains = torch.tensor([-4.0, 0.0, 4.0])
    grid = sm.rate_grid(listener, scapes.subset([0, 1]), bank, gains, fb)
    assert grid.expected.shape == (2, len(bank), 3) and grid.wave_x.shape == (2, len(bank), 3, 6 * 16 + 1)
    assert grid.alone.shape == (2,) and (grid.frame_error > 0).all()
    # only the augmented soundscape's summary differs between the two pipelines
    assert torch.equal(grid.wave_x[..., 2 * 16:], grid.feat_x[..., 2 * 16:])
    torch.manual_seed(0)
    model = sm.Predictor(6 * 16 + 1).eval()
    masker_mel = audio.power_spectrogram(bank.waves) @ fb
    with torch.no_grad():
        w, f = model(grid.wave_x[0]), model(grid.feat_x[0])
    assert torch.allclose(sm.score_waveform(model, scapes.waves[0], bank.waves, masker_mel, gains, fb), w, atol=1e-5)
    assert torch.allclose(sm.score_feature(model, scapes.waves[0], masker_mel, gains, fb), f, atol=1e-5)


def test_predictor_standardises_and_trains_to_fit():
    from companion import train

    g = torch.Generator().manual_seed(0)
    x = 5 + 3 * torch.randn(256, 7, generator=g)
    y = torch.tanh((x[:, 0] - 5) / 3)
    model = sm.Predictor(7, 16).normalize_with(x)
    assert torch.allclose(((x - model.mean) / model.std).mean(0), torch.zeros(7), atol=1e-5)
    hist = train.fit(model, x, y, 200, batch_size=64, lr=1e-2, seed=0, device="cpu", loss_fn=sm.mse_loss,
                     progress=False)
    assert hist[-1] < 0.1 * hist[0]


def test_stft_flops_and_the_feature_domain_is_far_cheaper(sounds):
    _, scapes, bank = sounds
    assert sm.stft_flops(2, 1600) == round(2 * 11 * (400 + 2.5 * 400 * math.log2(400) + 3 * 201))
    fb = audio.mel_filterbank(40)
    masker_mel = audio.power_spectrogram(bank.waves) @ fb
    gains = torch.linspace(-12, 12, 25)
    model = sm.Predictor(241).eval()
    wave = count_flops(lambda: sm.score_waveform(model, scapes.waves[0], bank.waves, masker_mel, gains, fb))
    feat = count_flops(lambda: sm.score_feature(model, scapes.waves[0], masker_mel, gains, fb))
    n = len(bank) * 25
    assert wave + sm.stft_flops(n + 1, S) > 20 * (feat + sm.stft_flops(1, S))


def test_best_and_pick():
    grid = torch.tensor([[[0.0, 1.0], [3.0, 2.0]], [[5.0, 0.0], [0.0, 0.0]]])
    m, g = sm.best(grid)
    assert m.tolist() == [1, 0] and g.tolist() == [0, 0]
    assert sm.pick(grid, m, g).tolist() == [3.0, 5.0]
