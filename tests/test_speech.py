"""The espeak-ng corpus (cache under two workers, one-line error when the program is missing), synthetic sounds
and mixing, frame span masks, the masked-speech encoder, and feature-space attacks limited to mel bands."""

import multiprocessing as mp
import os
import shutil

import numpy as np
import pytest
import torch

from companion import attacks, masks
from companion.data import DataError, sounds, speech
from companion.models.msm import MSMEncoder, SpeechClassifier, msm_loss, to_tokens

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None and os.environ.get("CI") != "true",
                                  reason="espeak-ng not installed (`make setup` installs it)")
UTTS = [speech.Utterance(w, v, 50, 160) for w in ("yes", "seven") for v in ("en-us+m3", "en-gb+f2")]


def _synthesize(cache: str, queue) -> None:
    os.environ["COMPANION_SPEECH_CACHE"] = cache
    queue.put([w.tolist() for w in speech.synthesize(UTTS, workers=1)])


@needs_espeak
def test_corpus_cache_is_shared_by_two_workers_and_deterministic(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_synthesize, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results[0] == results[1]
    assert len(list(tmp_path.glob("*.npy"))) == len(UTTS) and not list(tmp_path.glob("*.tmp.npy"))
    waves = [np.asarray(w) for w in results[0]]
    assert all(0.2 < len(w) / speech.SAMPLE_RATE < 1.5 and np.abs(w).max() > 0.05 for w in waves)
    assert not np.allclose(waves[0][:5000], waves[1][:5000])  # another voice, another waveform


@needs_espeak
def test_corpus_crosses_texts_voices_pitches_and_speeds(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_SPEECH_CACHE", str(tmp_path))
    s = speech.corpus(("yes", "no"), ("en-us+m1", "de"), pitches=(40,), speeds=(140, 180), seconds=0.8)
    assert s.waves.shape == (8, 12800) and len(s) == 8
    assert s.text.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and s.voice.tolist() == [0, 0, 1, 1] * 2
    sub = s.subset(s.voice == 1)
    assert len(sub) == 4 and all(u.voice == "de" for u in sub.utterances)


def test_missing_espeak_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DataError) as err:
        speech.require_espeak()
    assert "espeak-ng" in str(err.value) and "apt-get install" in str(err.value) and "\n" not in str(err.value)


def test_fit_length_centres_pads_and_crops():
    out = speech.fit_length([np.ones(4, np.float32), np.arange(10, dtype=np.float32)], 6)
    assert out[0].tolist() == [0, 1, 1, 1, 1, 0] and out[1].tolist() == [2, 3, 4, 5, 6, 7]


def test_sounds_are_unit_rms_and_mix_at_the_asked_snr():
    g = torch.Generator().manual_seed(0)
    made = [sounds.noise(k, 3, 8000, g) for k in ("white", "pink", "brown")]
    made += [sounds.bursts(3, 8000, g), sounds.chirps(3, 8000, g), sounds.chords(3, 8000, g),
             sounds.babble(torch.randn(5, 8000, generator=g), 3, generator=g)]
    for x in made:
        assert x.shape == (3, 8000) and torch.allclose(sounds.rms(x), torch.ones(3), atol=1e-4)
    signal, other = made[0], made[5]
    mixed = sounds.mix(signal, other, snr_db=6.0)
    ratio = 20 * torch.log10(sounds.rms(signal) / sounds.rms(mixed - signal))
    assert torch.allclose(ratio, torch.full((3,), 6.0), atol=1e-3)
    assert torch.allclose(sounds.rms(sounds.gain(signal, -20.0)), torch.full((3,), 0.1), atol=1e-4)
    # pink noise has more power at low than at high frequencies; white does not
    def low_high(x):
        p = torch.fft.rfft(x).abs().pow(2).mean(0)
        return float(p[1:200].mean() / p[-2000:].mean())
    assert low_high(made[1]) > 10 * low_high(made[0])


@pytest.mark.parametrize("rate,span", [(0.4, 5), (0.15, 3), (0.0, 5), (1.0, 4)])
def test_frame_spans_mask_an_exact_rate(rate, span):
    keep = masks.frame_spans(50, 33, rate, span, generator=torch.Generator().manual_seed(1))
    assert keep.shape == (50, 33) and keep.dtype == torch.bool
    assert ((~keep).sum(dim=1) == round(rate * 33)).all()


def test_frame_span_starts_follow_the_weights():
    w = torch.zeros(40)
    w[20:25] = 1.0
    keep = masks.frame_spans(500, 40, 0.1, 4, weights=w, generator=torch.Generator().manual_seed(0))
    masked = (~keep).float().mean(dim=0)
    assert masked[:20].sum() == 0 and masked[20:29].sum() > 0 and ((~keep).sum(dim=1) == 4).all()


def test_msm_loss_counts_only_masked_tokens_and_weights_utterances():
    torch.manual_seed(0)
    model = MSMEncoder(n_input=8, heads=(5, 7), d=32, n_layer=1, n_head=2, max_frames=20)
    feats = torch.randn(4, 20, 8)
    targets = torch.stack([torch.randint(0, 5, (4, 20)), torch.randint(0, 7, (4, 20))], dim=-1)
    tok = to_tokens(targets)
    assert tok.shape == (4, model.n_tokens(20), 2)
    keep = masks.frame_spans(4, 10, 0.5, 2, generator=torch.Generator().manual_seed(0))
    base = msm_loss(model, feats, tok, keep)
    changed = tok.clone()
    changed[keep] = 0  # targets at kept tokens do not count
    assert torch.allclose(base, msm_loss(model, feats, changed, keep))
    w = torch.tensor([1.0, 0.0, 0.0, 0.0])
    only_first = msm_loss(model, feats, tok, keep, weights=w)
    solo = msm_loss(model, feats[:1], tok[:1], keep[:1]) * (~keep[0]).sum() / (~keep).sum()
    assert torch.allclose(only_first, solo, atol=1e-6)
    # masked tokens see the mask embedding, not their features
    feats2 = feats.clone()
    feats2[0, 4:6] += 5.0  # frames 4, 5 feed tokens 2 and 3 (kernel 3, stride 2)
    k = torch.ones(1, 10, dtype=torch.bool)
    assert not torch.allclose(model.encode(feats[:1], k), model.encode(feats2[:1], k))
    assert SpeechClassifier(model, 3)(feats).shape == (4, 3)


def test_feature_pgd_and_universal_perturbation_stay_in_eps_and_in_the_band():
    torch.manual_seed(0)
    x = torch.randn(6, 10, 16)
    w = torch.randn(16)
    band = torch.zeros(1, 1, 16, dtype=torch.bool)
    band[..., 4:9] = True
    adv, _ = attacks.pgd_linf(lambda z, _: (z * w).sum(dim=(1, 2)), x, eps=0.3, steps=5, step_size=0.1,
                              region=band, bounds=None)
    d = adv - x
    assert d.abs().max() <= 0.3 + 1e-6 and d[..., ~band[0, 0]].abs().max() == 0 and d.abs().max() > 0.29
    delta, losses = attacks.universal_perturbation(lambda z, idx: (z * w).sum(), x, eps=0.5, epochs=3,
                                                   max_iter=10, lr=0.1, batch_size=2, region=band, init_std=0.01)
    assert delta.shape == (1, 10, 16) and delta.abs().max() <= 0.5 + 1e-6
    assert delta[..., ~band[0, 0]].abs().max() == 0
    assert torch.allclose(delta[..., band[0, 0]], -0.5 * torch.sign(w[band[0, 0]]).expand(1, 10, 5))
    assert len(losses) == 3 * 3 * 10
    _, early = attacks.universal_perturbation(lambda z, idx: (z * w).sum() ** 2 / 1e4, x, eps=0.5, epochs=1,
                                              max_iter=50, lr=0.1, batch_size=6, stop_below=1e-3)
    assert len(early) < 50 and early[-1] < 1e-3  # stops once the batch's loss is low enough
