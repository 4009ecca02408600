"""Soundscape augmentation by joint selection of masker and gain (Watcharasupat et al., 2022), at toy scale.

A pleasantness predictor scores an augmented soundscape (soundscape + masker at a digital gain). The paper's point:
the augmented soundscape's features need not come from mixing waveforms. Power spectra of uncorrelated sources
add, so the mel power of the mix is approximated in the **feature domain** as ``P_s + g² P_m`` from the
soundscape's and the masker's own mel power (computed once; the maskers' offline), and a whole masker × gain grid
is scored without one STFT per candidate.

Pieces (waveforms (N, S) at 16 kHz, features time-major (N, T, C), gains in dB):

- :func:`soundscapes` (traffic: swelling brown noise; construction: impulsive bursts; crowd: espeak babble) and
  :func:`maskers` (bird chirps; water: fluctuating pink-to-white noise; music chords), each a :class:`Sounds`;
- :class:`Listener` — the documented synthetic listener that stands in for ARAUS ratings, computed on the
  **waveform** mix: masker valence × its share of what is heard, minus the partial loudness of the soundscape
  left unmasked, minus a penalty for overall loudness;
- :func:`mix_grid` — waveform mixing of one soundscape with every masker at every gain (one STFT per mix),
  projected onto any filterbanks; :func:`feature_grid` — the same grid from ``P_s + g² P_m``;
- :class:`Predictor` — an MLP on time statistics of the log-mel of the augmented soundscape, of the soundscape and
  of the masker, and the gain; :func:`score_waveform` and :func:`score_feature` score a grid end to end;
- :func:`stft_flops` — the FFT work ``torch.utils.flop_counter`` does not count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from companion import audio
from companion.data import sounds

SOUNDSCAPE_KINDS = ("traffic", "construction", "crowd")
MASKER_KINDS = ("bird", "water", "music")
EPS = 1e-10  # floor of the mel power before the log


@dataclass
class Sounds:
    """Waveforms with their kind: ``waves`` (N, S), ``kind`` (N,) index into ``kinds``, ``level_db`` (N,) RMS
    level in dB re full scale."""

    waves: torch.Tensor
    kind: torch.Tensor
    kinds: tuple[str, ...]
    level_db: torch.Tensor

    def __len__(self) -> int:
        return len(self.waves)

    def subset(self, index) -> Sounds:
        index = torch.as_tensor(index)
        return Sounds(self.waves[index], self.kind[index], self.kinds, self.level_db[index])

    def names(self) -> list[str]:
        """One name per sound: its kind and its number within that kind (``bird 2``)."""
        seen: dict[int, int] = {}
        out = []
        for k in self.kind.tolist():
            seen[k] = seen.get(k, 0) + 1
            out.append(f"{self.kinds[k]} {seen[k]}")
        return out


def speech_streams(clips: torch.Tensor, n: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """(M, s) one-word clips → (n, samples) continuous speech: random clips one after another, cropped."""
    words = -(-samples // clips.shape[1])
    pick = torch.randint(0, len(clips), (n, words), generator=generator)
    return clips[pick].reshape(n, -1)[:, :samples]


def soundscapes(n: int, samples: int, speech: torch.Tensor, generator: torch.Generator,
                level_db: tuple[float, float] = (-38.0, -22.0)) -> Sounds:
    """``n`` soundscapes, kinds dealt out in turn (traffic, construction, crowd), each at a level drawn uniformly
    from ``level_db``. Traffic: brown noise with a slow pass-by swell (0.2–0.7 Hz); construction: impulsive
    bursts (2–6 hits/s) over a brown-noise floor 20 dB down; crowd: babble of four talkers made of ``speech``
    streams (M, samples)."""
    kind = torch.arange(n) % len(SOUNDSCAPE_KINDS)
    waves = torch.zeros(n, samples)
    for i, k in enumerate(kind.tolist()):
        u = torch.rand(1, generator=generator).item()
        if k == 0:
            waves[i] = sounds.am(sounds.noise("brown", 1, samples, generator), 0.2 + 0.5 * u, 0.7, generator)[0]
        elif k == 1:
            hits = sounds.bursts(1, samples, generator, rate_hz=2.0 + 4.0 * u)
            waves[i] = sounds.mix(hits, sounds.noise("brown", 1, samples, generator), 20.0)[0]
        else:
            waves[i] = sounds.babble(speech, 1, talkers=4, generator=generator)[0]
    levels = level_db[0] + (level_db[1] - level_db[0]) * torch.rand(n, generator=generator)
    waves = sounds.gain(waves / sounds.rms(waves)[:, None], levels)
    return Sounds(waves, kind, SOUNDSCAPE_KINDS, levels)


def maskers(per_kind: int, samples: int, generator: torch.Generator, listener: Listener,
            level_db: float = -40.0) -> Sounds:
    """``per_kind`` maskers of each kind (bird, water, music, in that order), each calibrated so that at 0 dB
    gain it is as loud, for ``listener``, as white noise at ``level_db`` (the role of ARAUS's calibration to a
    fixed level). Birds: 2–8 calls/s; water: noise between pink and white (random share) with a 2–6 Hz
    fluctuation; music: a triad on a random root. Instance parameters are drawn from ``generator``."""
    waves, kind = [], []
    for k in range(len(MASKER_KINDS)):
        for _ in range(per_kind):
            u = torch.rand(2, generator=generator).tolist()
            if k == 0:
                w = sounds.chirps(1, samples, generator, calls_hz=2.0 + 6.0 * u[0])
            elif k == 1:
                shaped = (1 - u[0]) * sounds.noise("pink", 1, samples, generator) \
                    + u[0] * sounds.noise("white", 1, samples, generator)
                w = sounds.am(shaped, 2.0 + 4.0 * u[1], 0.5, generator)
            else:
                w = sounds.chords(1, samples, generator)
            waves.append(w[0])
            kind.append(k)
    waves = listener.calibrate(torch.stack(waves), level_db)
    return Sounds(waves, torch.tensor(kind), MASKER_KINDS, 20 * torch.log10(sounds.rms(waves)))


def gain_factors(gains_db: torch.Tensor) -> torch.Tensor:
    """(G,) dB → (G,) amplitude factors g (the power factor is g²)."""
    return 10.0 ** (torch.as_tensor(gains_db, dtype=torch.float32) / 20.0)


def mix_grid(scape: torch.Tensor, masks: torch.Tensor, gains_db: torch.Tensor,
             filterbanks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Waveform mixing: ``scape`` (S,) + g·masker for every masker (M, S) and gain (G,) — one power spectrogram
    per mix, projected onto each filterbank (F, C) → name → (M, G, T, C) band power."""
    g = gain_factors(gains_db)
    mixes = scape[None, None] + g[None, :, None] * masks[:, None]  # (M, G, S)
    power = audio.power_spectrogram(mixes.reshape(-1, mixes.shape[-1]))
    return {name: (power @ fb).reshape(len(masks), len(g), power.shape[1], fb.shape[1])
            for name, fb in filterbanks.items()}


def feature_grid(scape_power: torch.Tensor, masker_power: torch.Tensor, gains_db: torch.Tensor) -> torch.Tensor:
    """Feature-domain mixing: (T, C) soundscape and (M, T, C) masker band power → (M, G, T, C) ``P_s + g² P_m``."""
    g2 = gain_factors(gains_db) ** 2
    return torch.addcmul(scape_power, g2[:, None, None], masker_power[:, None])


def gained(masker_power: torch.Tensor, gains_db: torch.Tensor) -> torch.Tensor:
    """(M, T, C) → (M, G, T, C) band power of each masker alone at each gain (exact: power scales by g²)."""
    return gain_factors(gains_db)[None, :, None, None] ** 2 * masker_power[:, None]


@dataclass(frozen=True)
class Listener:
    """The synthetic listener: expected ISO-style pleasantness in (-1, 1) of an augmented soundscape, from
    ``bands`` mel-band powers (a stand-in for critical bands) of the waveform mix, of the soundscape alone and of
    the gained masker alone.

    Specific loudness per band and frame is ``(P / P_thr)^exponent`` (Stevens/Zwicker's 0.23 power law), with
    ``P_thr`` the band power of white noise at ``threshold_db``; loudness ``N`` is its mean over bands and frames.
    With N_mix, N_scape and N_masker the loudness of the mix and of each source alone:

    - partial loudness of the soundscape (what the masker leaves unmasked) ``A = N_mix − N_masker``;
    - partial loudness of the masker ``B = N_mix − N_scape``; its share of what is heard ``B / (A + B)``;
    - pleasantness = tanh(offset + appeal[scape kind][masker kind] · share − annoyance[scape kind] · A / scale
      − loud_weight · relu(N_mix − comfort) / scale).

    A masker pleases through its share and by masking the soundscape, and displeases by making everything louder:
    the best gain lies inside the grid and depends on the soundscape's level and spectrum. ``appeal`` is how much
    a masker kind suits a soundscape kind (rows traffic, construction, crowd; columns bird, water, music): birds
    are liked everywhere, most of all over traffic; water suits construction, music suits a crowd — the
    contextual appropriateness that makes ARAUS's best masker differ between soundscapes. A rating adds Gaussian
    listener noise of standard deviation ``noise``.
    """

    bands: int = 24
    exponent: float = 0.23
    threshold_db: float = -80.0
    appeal: tuple[tuple[float, ...], ...] = ((1.0, 0.7, 0.6), (0.7, 0.9, 0.6), (0.7, 0.5, 0.9))
    annoyance: tuple[float, ...] = (0.6, 0.8, 0.5)  # traffic, construction, crowd
    loud_weight: float = 1.0
    comfort: float = 10.0
    scale: float = 8.0
    offset: float = 0.5
    noise: float = 0.1

    def filterbank(self) -> torch.Tensor:
        """(F, bands) the listener's filterbank."""
        return audio.mel_filterbank(self.bands)

    def threshold(self) -> torch.Tensor:
        """(bands,) band power of white noise at ``threshold_db`` (Hann-windowed periodogram, Slaney filters)."""
        window = torch.hann_window(audio.N_FFT).pow(2).sum()
        return 10.0 ** (self.threshold_db / 10.0) * window * self.filterbank().sum(0)

    def band_power(self, waves: torch.Tensor) -> torch.Tensor:
        """(N, S) waveforms → (N, T, bands) the listener's band power."""
        return audio.power_spectrogram(waves) @ self.filterbank()

    def calibrate(self, waves: torch.Tensor, level_db: float) -> torch.Tensor:
        """Scale each waveform (N, S) so that its loudness equals that of white noise at ``level_db`` (loudness is
        a power law in the gain, so the factor is exact up to the threshold's clamp)."""
        target = 10.0 ** (self.exponent * (level_db - self.threshold_db) / 10.0)
        n = self.loudness(self.band_power(waves))
        return waves * (target / n)[:, None] ** (1.0 / (2 * self.exponent))

    def loudness(self, band_power: torch.Tensor) -> torch.Tensor:
        """(..., T, bands) → (...,) mean specific loudness."""
        return (band_power / self.threshold()).clamp_min(0).pow(self.exponent).mean(dim=(-2, -1))

    def pleasantness(self, mix_power: torch.Tensor, scape_power: torch.Tensor, masker_power: torch.Tensor,
                     scape_kind: torch.Tensor, masker_kind: torch.Tensor) -> torch.Tensor:
        """Expected pleasantness; powers (..., T, bands) broadcast together, kinds broadcast to the result."""
        n_mix, n_scape, n_mask = self.loudness(mix_power), self.loudness(scape_power), self.loudness(masker_power)
        a = (n_mix - n_mask).clamp_min(0)
        b = (n_mix - n_scape).clamp_min(0)
        share = b / (a + b).clamp_min(1e-6)
        appeal = torch.tensor(self.appeal)[scape_kind, masker_kind]
        annoy = torch.tensor(self.annoyance)[scape_kind]
        raw = self.offset + appeal * share - annoy * a / self.scale \
            - self.loud_weight * (n_mix - self.comfort).clamp_min(0) / self.scale
        return torch.tanh(raw)

    def alone(self, scape_power: torch.Tensor, scape_kind: torch.Tensor) -> torch.Tensor:
        """Expected pleasantness of the soundscape without a masker: (..., T, bands) → (...,)."""
        n = self.loudness(scape_power)
        annoy = torch.tensor(self.annoyance)[scape_kind]
        return torch.tanh(self.offset - annoy * n / self.scale
                          - self.loud_weight * (n - self.comfort).clamp_min(0) / self.scale)

    def rate(self, expected: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One listener's rating: expected pleasantness + Gaussian noise, clipped to [-1, 1]."""
        return (expected + self.noise * torch.randn(expected.shape, generator=generator)).clamp(-1, 1)


def log_power(band_power: torch.Tensor) -> torch.Tensor:
    """ln(power + EPS), the log-mel the predictor reads."""
    return torch.log(band_power + EPS)


def summary(log_power: torch.Tensor) -> torch.Tensor:
    """(..., T, C) log band power → (..., 2C): its mean and (population) standard deviation over time, in two
    passes over the data (``vector_norm`` gives the second moment without a squared copy)."""
    frames = log_power.shape[-2]
    mean = log_power.mean(-2)
    second = torch.linalg.vector_norm(log_power, dim=-2).square() / frames
    return torch.cat([mean, (second - mean.square()).clamp_min(0).sqrt()], dim=-1)


def predictor_inputs(augmented: torch.Tensor, scape_power: torch.Tensor, masker_power: torch.Tensor,
                     gains_db: torch.Tensor) -> torch.Tensor:
    """The predictor's input for a grid: summaries of the augmented soundscape's log-mel (..., M, G, T, C), of the
    soundscape's band power alone (..., T, C) and of each masker's at 0 dB (M, T, C), and the gain (G,) in units of
    12 dB → (..., M, G, 6C + 1). Only the first part depends on how the augmented soundscape was formed; the rest
    is computed once per sound."""
    m, g = augmented.shape[-4:-2]
    batch = augmented.shape[:-4]
    parts = [summary(augmented),
             summary(log_power(scape_power))[..., None, None, :].expand(*batch, m, g, -1),
             summary(log_power(masker_power))[:, None].expand(*batch, m, g, -1),
             (torch.as_tensor(gains_db, dtype=augmented.dtype) / 12.0)[:, None].expand(*batch, m, g, 1)]
    return torch.cat(parts, dim=-1)


class Predictor(nn.Module):
    """Pleasantness predictor: standardised (N, 6C + 1) inputs (:func:`predictor_inputs`) → (N,) pleasantness in
    (-1, 1) (an MLP, tanh out).

    ``normalize_with(x)`` sets the per-input mean/std buffers from training inputs."""

    def __init__(self, n_inputs: int, hidden: int = 64):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("std", torch.ones(n_inputs))
        self.net = nn.Sequential(nn.Linear(n_inputs, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 1))

    def normalize_with(self, x: torch.Tensor) -> Predictor:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-4))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net((x - self.mean) / self.std).squeeze(-1))


def mse_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``train.fit`` loss: mean squared error of the predicted pleasantness against the ratings."""
    return (model(x) - y).pow(2).mean()


@torch.no_grad()
def score_waveform(model: Predictor, scape: torch.Tensor, masks: torch.Tensor, masker_power: torch.Tensor,
                   gains_db: torch.Tensor, mel_fb: torch.Tensor) -> torch.Tensor:
    """Waveform pipeline: mix ``scape`` (S,) with every masker (M, S) at every gain, one STFT per mix and one of
    the soundscape (the maskers' own mel power (M, T, C) was computed offline), then the predictor → (M, G)."""
    aug = log_power(mix_grid(scape, masks, gains_db, {"mel": mel_fb})["mel"])
    scape_power = audio.power_spectrogram(scape[None])[0] @ mel_fb
    x = predictor_inputs(aug, scape_power, masker_power, gains_db)
    return model(x.reshape(-1, x.shape[-1])).reshape(aug.shape[:2])


@torch.no_grad()
def score_feature(model: Predictor, scape: torch.Tensor, masker_power: torch.Tensor, gains_db: torch.Tensor,
                  mel_fb: torch.Tensor) -> torch.Tensor:
    """Feature-domain pipeline: one STFT of ``scape`` (S,); the maskers' mel power (M, T, C) was computed offline;
    ``P_s + g² P_m`` for every masker and gain, then the predictor → (M, G) predicted pleasantness."""
    scape_power = audio.power_spectrogram(scape[None])[0] @ mel_fb
    aug = feature_grid(scape_power + EPS, masker_power, gains_db).log_()  # = log_power(P_s + g² P_m), in place
    x = predictor_inputs(aug, scape_power, masker_power, gains_db)
    return model(x.reshape(-1, x.shape[-1])).reshape(aug.shape[:2])


def stft_flops(signals: int, samples: int, n_fft: int = audio.N_FFT, hop: int = audio.HOP) -> int:
    """FLOPs of the power spectrograms of ``signals`` waveforms that ``torch.utils.flop_counter`` does not see:
    per frame the window (n_fft multiplies), a real FFT (the usual 2.5·n·log2 n) and |X|² (3 per bin)."""
    frames = samples // hop + 1
    per_frame = n_fft + 2.5 * n_fft * math.log2(n_fft) + 3 * (n_fft // 2 + 1)
    return int(round(signals * frames * per_frame))


def best(grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, M, G) scores → the (masker, gain) index pair of each row's maximum, two (N,) long tensors."""
    flat = grid.flatten(1).argmax(1)
    return flat // grid.shape[2], flat % grid.shape[2]


def pick(grid: torch.Tensor, masker: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """(N, M, G) values at each row's chosen (masker, gain) → (N,)."""
    return grid[torch.arange(len(grid)), masker, gain]


@dataclass
class Grid:
    """Every soundscape of a set with every masker of a bank at every gain: ``expected`` (N, M, G) the listener's
    expected pleasantness of the waveform mix; ``wave_x`` and ``feat_x`` (N, M, G, 6C + 1) the predictor's inputs from
    waveform mixing and from feature-domain mixing; ``alone`` (N,) the listener's pleasantness without a masker;
    ``frame_error`` (N,) mean |log-mel difference| per frame and band between the two mixings (nats)."""

    expected: torch.Tensor
    wave_x: torch.Tensor
    feat_x: torch.Tensor
    alone: torch.Tensor
    frame_error: torch.Tensor


@torch.no_grad()
def rate_grid(listener: Listener, scapes: Sounds, bank: Sounds, gains_db: torch.Tensor,
              mel_fb: torch.Tensor) -> Grid:
    """Mix every soundscape with every masker at every gain as waveforms (one STFT per mix, shared by the listener
    and the waveform arm's features) and in the feature domain; see :class:`Grid`."""
    fbs = {"listener": listener.filterbank(), "mel": mel_fb}
    own_s = {k: audio.power_spectrogram(scapes.waves) @ fb for k, fb in fbs.items()}
    own_m = {k: audio.power_spectrogram(bank.waves) @ fb for k, fb in fbs.items()}
    masker_l = gained(own_m["listener"], gains_db)
    out = {k: [] for k in ("expected", "wave_x", "feat_x", "frame_error")}
    for i in range(len(scapes)):
        mixed = mix_grid(scapes.waves[i], bank.waves, gains_db, fbs)
        out["expected"].append(listener.pleasantness(mixed["listener"], own_s["listener"][i], masker_l,
                                                     scapes.kind[i], bank.kind[:, None]))
        approx = feature_grid(own_s["mel"][i], own_m["mel"], gains_db)
        wave_log, feat_log = log_power(mixed["mel"]), log_power(approx)
        out["wave_x"].append(predictor_inputs(wave_log, own_s["mel"][i], own_m["mel"], gains_db))
        out["feat_x"].append(predictor_inputs(feat_log, own_s["mel"][i], own_m["mel"], gains_db))
        out["frame_error"].append((wave_log - feat_log).abs().mean())
    stack = {k: torch.stack(v) for k, v in out.items()}
    return Grid(stack["expected"], stack["wave_x"], stack["feat_x"], listener.alone(own_s["listener"], scapes.kind),
                stack["frame_error"])
