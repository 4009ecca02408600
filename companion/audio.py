"""The audio front-end in torch only: power spectrogram, log-mel, MFCC with deltas, and residual k-means targets.

Batched and differentiable (gradients reach the waveform), on whatever device the waveforms are on. Not torchaudio:
its PyPI wheel is a CUDA build that does not import beside the CPU torch. The filterbank, dB scale, DCT and
deltas follow librosa's defaults (Slaney mel scale and area normalisation, ``power_to_db`` with ``top_db=80``,
orthonormal DCT-II, Savitzky–Golay deltas), and the tests check them against librosa to 1e-4.

Conventions: waveforms are (N, S) float at :data:`SAMPLE_RATE`; features are **time-major** (N, T, C) with a
10 ms hop, T = S // hop + 1 (centred frames, zero padding).

Targets for masked speech modelling: :class:`ResidualKMeans` — scikit-learn k-means on each level's residual
(``levels=1`` is HuBERT's plain k-means).
"""

from __future__ import annotations

import math

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window
HOP = 160  # 10 ms hop


def _batched(waves: torch.Tensor) -> torch.Tensor:
    if waves.dim() == 1:
        return waves[None]
    if waves.dim() != 2:
        raise ValueError(f"waveforms must be (N, S) or (S,), got shape {tuple(waves.shape)}")
    return waves


def power_spectrogram(waves: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """(N, S) waveforms → (N, T, n_fft//2 + 1) power |STFT|², Hann window, centred frames with zero padding."""
    waves = _batched(waves)
    window = torch.hann_window(n_fft, device=waves.device, dtype=waves.dtype)
    spec = torch.stft(waves, n_fft, hop_length=hop, window=window, center=True, pad_mode="constant",
                      return_complex=True)
    return spec.abs().pow(2).transpose(1, 2)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default, ``htk=False``)."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(n_mels: int = 40, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """(n_fft//2 + 1, n_mels) triangular filters on the Slaney mel scale, each scaled to unit area (Slaney norm)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(weights.T.astype(np.float32))


def mel_power(waves: torch.Tensor, n_mels: int = 40, n_fft: int = N_FFT, hop: int = HOP,
              sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(N, S) → (N, T, n_mels) mel-band power."""
    power = power_spectrogram(waves, n_fft, hop)
    return power @ mel_filterbank(n_mels, n_fft, sample_rate).to(power)


def log_mel(waves: torch.Tensor, n_mels: int = 40, eps: float = 1e-6, **kwargs) -> torch.Tensor:
    """(N, S) → (N, T, n_mels) natural-log mel power, ln(mel + eps)."""
    return torch.log(mel_power(waves, n_mels, **kwargs) + eps)


def power_to_db(power: torch.Tensor, top_db: float | None = 80.0, amin: float = 1e-10) -> torch.Tensor:
    """10·log10(power), floored ``top_db`` below each item's maximum (librosa's ``power_to_db``, ref = 1)."""
    db = 10.0 * torch.log10(power.clamp_min(amin))
    if top_db is not None:
        peak = db.flatten(1).amax(dim=1).view(-1, *([1] * (db.dim() - 1)))
        db = torch.maximum(db, peak - top_db)
    return db


def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_in, n_out) orthonormal DCT-II basis (``x @ dct_matrix`` = scipy's ``dct(x, type=2, norm="ortho")``)."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)
    basis = torch.cos(math.pi / n_in * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_in)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float()


def mfcc(waves: torch.Tensor, n_mfcc: int = 13, n_mels: int = 40, **kwargs) -> torch.Tensor:
    """(N, S) → (N, T, n_mfcc): orthonormal DCT-II of the dB mel spectrogram (librosa's ``feature.mfcc``)."""
    db = power_to_db(mel_power(waves, n_mels, **kwargs))
    return db @ dct_matrix(n_mels, n_mfcc).to(db)


def deltas(feats: torch.Tensor, width: int = 5) -> torch.Tensor:
    """(N, T, C) → (N, T, C) local slopes over ``width`` frames (regression deltas; edges repeat the first and
    last frame: librosa's ``feature.delta(width=width, mode="nearest")``)."""
    if width < 3 or width % 2 == 0:
        raise ValueError(f"width must be an odd integer >= 3, got {width}")
    half = width // 2
    padded = torch.cat([feats[:, :1].expand(-1, half, -1), feats, feats[:, -1:].expand(-1, half, -1)], dim=1)
    t = feats.shape[1]
    slope = sum(k * (padded[:, half + k:half + k + t] - padded[:, half - k:half - k + t]) for k in range(1, half + 1))
    return slope / (2 * sum(k * k for k in range(1, half + 1)))


def mfcc_deltas(waves: torch.Tensor, n_mfcc: int = 13, width: int = 5, **kwargs) -> torch.Tensor:
    """(N, S) → (N, T, 3·n_mfcc): MFCC, Δ and ΔΔ (HuBERT's first-iteration clustering features)."""
    c = mfcc(waves, n_mfcc, **kwargs)
    d = deltas(c, width)
    return torch.cat([c, d, deltas(d, width)], dim=-1)


class ResidualKMeans:
    """Residual vector quantisation by k-means: level 1 clusters the features, each further level clusters what
    the levels before it left over (scikit-learn ``KMeans``, seeded). ``levels=1`` is plain k-means.

    ``fit(x (M, C))``, ``encode(x (..., C)) -> (..., levels)`` int64 codes, ``decode(codes) -> (..., C)``,
    ``level_errors(x)`` → the mean squared reconstruction error after each level (it falls level by level).
    """

    def __init__(self, k: int = 64, levels: int = 3, seed: int = 0, n_init: int = 1, max_iter: int = 50):
        if k < 2 or levels < 1:
            raise ValueError(f"need k >= 2 and levels >= 1, got k={k}, levels={levels}")
        self.k, self.levels, self.seed, self.n_init, self.max_iter = k, levels, seed, n_init, max_iter
        self.codebooks: list[torch.Tensor] = []  # levels × (k, C)

    def fit(self, x: torch.Tensor) -> ResidualKMeans:
        from sklearn.cluster import KMeans

        residual = x.detach().reshape(-1, x.shape[-1]).double().cpu().numpy()
        self.codebooks = []
        for level in range(self.levels):
            km = KMeans(self.k, n_init=self.n_init, max_iter=self.max_iter, random_state=self.seed + level)
            labels = km.fit_predict(residual)
            centres = km.cluster_centers_
            residual = residual - centres[labels]
            self.codebooks.append(torch.from_numpy(centres).float())
        return self

    def _check(self) -> None:
        if not self.codebooks:
            raise RuntimeError("ResidualKMeans.fit must run before encode/decode")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) → (..., levels) int64: the nearest centre of each level to what is left after the levels before."""
        self._check()
        residual = x.detach().reshape(-1, x.shape[-1]).float().cpu()
        codes = []
        for centres in self.codebooks:
            c = torch.cdist(residual, centres).argmin(dim=1)
            residual = residual - centres[c]
            codes.append(c)
        return torch.stack(codes, dim=-1).reshape(*x.shape[:-1], self.levels)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., L) codes of the first L ≤ levels levels → (..., C) the sum of their centres."""
        self._check()
        return sum(self.codebooks[i][codes[..., i]] for i in range(codes.shape[-1]))

    def level_errors(self, x: torch.Tensor) -> list[float]:
        """Mean squared error of the reconstruction from the first 1, 2, …, levels levels."""
        codes = self.encode(x)
        x = x.detach().float().cpu()
        return [float((self.decode(codes[..., :i + 1]) - x).pow(2).mean()) for i in range(self.levels)]
