"""Synthetic sounds and mixing, seeded by a ``torch.Generator``: noises, bursts, chirps, chords, babble.

All return (n, samples) float32 waveforms at 16 kHz with unit RMS (scale them with :func:`gain` or :func:`mix`).

- :func:`noise` — white, pink (1/f power) or brown (1/f²) noise, shaped in the frequency domain;
- :func:`bursts` — impulsive, construction-like hits (decaying noise bursts at random times);
- :func:`chirps` — bird-like calls: short rising or falling frequency sweeps with harmonics;
- :func:`chords` — music-like tones: three-note chords with a slow attack and decay;
- :func:`babble` — several talkers of a speech corpus summed at random offsets (a crowd);
- :func:`am` — slow amplitude modulation (traffic's swell);
- :func:`rms`, :func:`gain` (dB), :func:`mix` (add ``other`` at a signal-to-noise ratio).
"""

from __future__ import annotations

import math

import torch

SAMPLE_RATE = 16000


def rms(x: torch.Tensor) -> torch.Tensor:
    """(N, S) → (N,) root-mean-square level."""
    return x.pow(2).mean(dim=-1).sqrt()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / rms(x).clamp_min(1e-8)[:, None]


def gain(x: torch.Tensor, db) -> torch.Tensor:
    """Scale by ``db`` decibels (a number or an (N,) tensor)."""
    factor = 10.0 ** (torch.as_tensor(db, dtype=x.dtype) / 20.0)
    if factor.dim():
        factor = factor.reshape(-1, *([1] * (x.dim() - 1)))
    return x * factor


def mix(signal: torch.Tensor, other: torch.Tensor, snr_db) -> torch.Tensor:
    """``signal + other`` with ``other`` scaled so that rms(signal) / rms(other) is ``snr_db`` decibels."""
    snr = torch.as_tensor(snr_db, dtype=signal.dtype)
    scale = rms(signal) / rms(other).clamp_min(1e-8) / 10.0 ** (snr / 20.0)
    return signal + other * scale[..., None]


def noise(kind: str, n: int, samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """White, pink (power ∝ 1/f) or brown (∝ 1/f²) noise, (n, samples), unit RMS."""
    exponents = {"white": 0.0, "pink": 1.0, "brown": 2.0}
    if kind not in exponents:
        raise ValueError(f"noise kind must be one of {sorted(exponents)}, got {kind!r}")
    white = torch.randn(n, samples, generator=generator)
    if kind == "white":
        return _unit(white)
    spec = torch.fft.rfft(white)
    f = torch.arange(spec.shape[-1], dtype=torch.float32).clamp_min(1.0)
    return _unit(torch.fft.irfft(spec / f ** (exponents[kind] / 2), n=samples))


def am(x: torch.Tensor, rate_hz: float = 0.5, depth: float = 0.6,
       generator: torch.Generator | None = None) -> torch.Tensor:
    """Slow sinusoidal amplitude modulation at a random phase per row (depth 0 = none, 1 = full), unit RMS."""
    t = torch.arange(x.shape[-1]) / SAMPLE_RATE
    phase = 2 * math.pi * torch.rand(len(x), 1, generator=generator)
    return _unit(x * (1 - depth / 2 + depth / 2 * torch.sin(2 * math.pi * rate_hz * t + phase)))


def bursts(n: int, samples: int, generator: torch.Generator | None = None, rate_hz: float = 4.0) -> torch.Tensor:
    """Impulsive hits: noise bursts with a 30 ms decay at Poisson times (``rate_hz`` per second), unit RMS."""
    out = torch.zeros(n, samples)
    expected = max(1, round(rate_hz * samples / SAMPLE_RATE))
    length = int(0.15 * SAMPLE_RATE)
    env = torch.exp(-torch.arange(length) / (0.03 * SAMPLE_RATE))
    for i in range(n):
        count = int(torch.poisson(torch.tensor(float(expected)), generator=generator)) or 1
        starts = torch.randint(0, max(1, samples - length), (count,), generator=generator)
        for s in starts.tolist():
            hit = torch.randn(length, generator=generator) * env * (0.5 + torch.rand(1, generator=generator))
            out[i, s:s + length] += hit[:samples - s]
    return _unit(out + 1e-4 * torch.randn(n, samples, generator=generator))


def chirps(n: int, samples: int, generator: torch.Generator | None = None, calls_hz: float = 3.0) -> torch.Tensor:
    """Bird-like calls: 60–150 ms sweeps between 2 and 6 kHz (rising or falling) with a second harmonic, unit RMS."""
    out = torch.zeros(n, samples)
    for i in range(n):
        count = max(1, int(torch.poisson(torch.tensor(calls_hz * samples / SAMPLE_RATE), generator=generator)))
        for _ in range(count):
            length = int(SAMPLE_RATE * (0.06 + 0.09 * float(torch.rand(1, generator=generator))))
            f0, f1 = (2000 + 4000 * torch.rand(2, generator=generator)).tolist()
            t = torch.arange(length) / SAMPLE_RATE
            freq = f0 + (f1 - f0) * t / t[-1]
            phase = 2 * math.pi * torch.cumsum(freq, 0) / SAMPLE_RATE
            call = (torch.sin(phase) + 0.3 * torch.sin(2 * phase)) * torch.hann_window(length, periodic=False)
            s = int(torch.randint(0, max(1, samples - length), (1,), generator=generator))
            out[i, s:s + length] += call[:samples - s]
    return _unit(out + 1e-4 * torch.randn(n, samples, generator=generator))


def chords(n: int, samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Music-like tones: a major or minor triad on a random root (110–440 Hz) with three harmonics each, a 50 ms
    attack and a slow decay, unit RMS."""
    t = torch.arange(samples) / SAMPLE_RATE
    out = torch.zeros(n, samples)
    env = torch.clamp(t / 0.05, max=1.0) * torch.exp(-t / 1.5)
    for i in range(n):
        root = 110.0 * 2 ** (2 * float(torch.rand(1, generator=generator)))
        third = 4 if float(torch.rand(1, generator=generator)) < 0.5 else 3
        for semis in (0, third, 7):
            f = root * 2 ** (semis / 12)
            for h in (1, 2, 3):
                out[i] += torch.sin(2 * math.pi * f * h * t) / h
        out[i] *= env
    return _unit(out)


def babble(speech_waves: torch.Tensor, n: int, talkers: int = 4,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """A crowd: ``talkers`` clips of ``speech_waves`` (M, S) per row, each circularly shifted by a random offset and
    at a random level within 6 dB, summed; unit RMS."""
    m, samples = speech_waves.shape
    picks = torch.randint(0, m, (n, talkers), generator=generator)
    shifts = torch.randint(0, samples, (n, talkers), generator=generator)
    levels = 10 ** (-6 * torch.rand(n, talkers, generator=generator) / 20)
    out = torch.zeros(n, samples)
    for i in range(n):
        for j in range(talkers):
            out[i] += levels[i, j] * torch.roll(_unit(speech_waves[picks[i, j]][None])[0], int(shifts[i, j]))
    return _unit(out)
