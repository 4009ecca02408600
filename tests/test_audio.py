"""The torch audio front-end against librosa (the test oracle), and residual k-means targets."""

import numpy as np
import pytest
import torch

from companion import audio

librosa = pytest.importorskip("librosa")


@pytest.fixture(scope="module")
def waves():
    g = np.random.default_rng(0)
    t = np.arange(12000) / audio.SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * np.linspace(0, 1, len(t))
    return np.stack([tone, 0.1 * g.standard_normal(len(t))]).astype(np.float32)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_mel_power_matches_librosa(waves):
    ours = audio.mel_power(torch.from_numpy(waves)).numpy()
    for i, w in enumerate(waves):
        ref = librosa.feature.melspectrogram(y=w, sr=audio.SAMPLE_RATE, n_fft=audio.N_FFT, hop_length=audio.HOP,
                                             n_mels=40)
        assert ours[i].T.shape == ref.shape
        assert _rel(ours[i].T, ref) < 1e-4


def test_mfcc_and_deltas_match_librosa(waves):
    ours = audio.mfcc(torch.from_numpy(waves)).numpy()
    for i, w in enumerate(waves):
        ref = librosa.feature.mfcc(y=w, sr=audio.SAMPLE_RATE, n_fft=audio.N_FFT, hop_length=audio.HOP, n_mels=40,
                                   n_mfcc=13)
        assert _rel(ours[i].T, ref) < 1e-4
        ref_d = librosa.feature.delta(ref, width=5, mode="nearest")
        ours_d = audio.deltas(torch.from_numpy(ref.T[None]).float())[0].numpy().T
        assert _rel(ours_d, ref_d) < 1e-4


def test_features_are_time_major_batched_and_differentiable(waves):
    x = torch.from_numpy(waves).requires_grad_(True)
    feats = audio.mfcc_deltas(x)
    assert feats.shape == (2, 12000 // audio.HOP + 1, 39)
    assert audio.log_mel(x).shape == (2, 76, 40)
    audio.log_mel(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_residual_kmeans_error_falls_per_level_and_round_trips():
    x = torch.randn(2000, 6, generator=torch.Generator().manual_seed(0))
    rvq = audio.ResidualKMeans(k=16, levels=3, seed=0).fit(x)
    errors = rvq.level_errors(x)
    assert errors[0] > errors[1] > errors[2]
    codes = rvq.encode(x.reshape(40, 50, 6))
    assert codes.shape == (40, 50, 3) and codes.dtype == torch.int64 and int(codes.max()) < 16
    assert torch.allclose(rvq.decode(codes).reshape(-1, 6).sub(x).pow(2).mean(), torch.tensor(errors[2]), atol=1e-5)
    again = audio.ResidualKMeans(k=16, levels=3, seed=0).fit(x)
    assert torch.equal(again.encode(x), rvq.encode(x))
