"""Spoken words from espeak-ng: a speech corpus with ground truth (text, voice, pitch, speed), made on the fly.

espeak-ng (Debian's ``espeak-ng`` package; GPL-3 program, the audio it makes is ours) writes each utterance with
``-w`` (its ``--stdout`` WAV header carries a bogus length), scipy reads it, and ``resample_poly`` takes it from
22.05 kHz to 16 kHz (no sox). Each utterance is cached as a ``.npy`` under ``runs/cache/speech`` (or
``$COMPANION_SPEECH_CACHE``), named by a hash of its parameters and the espeak-ng version; a file lock per
request keeps parallel workers from synthesising the same set twice, and files appear atomically. Synthesis is
deterministic, so a warm and a cold cache give the same numbers.

- :func:`require_espeak` raises :class:`~companion.data.files.DataError` (one line with the install command)
  when the program is missing; notebooks call it first in their data cell.
- :class:`Utterance` (text, voice, pitch 0–99, speed in words per minute); :func:`synthesize` → waveforms.
- :func:`corpus` — every text × voice × pitch × speed, centred in a fixed length: a :class:`SpeechSet`.
- Voices: :data:`ENGLISH_VOICES` (accents × espeak's male/female variants) and :data:`FOREIGN_VOICES`
  (other languages' voices reading English text: a strong accent, for out-of-domain speech).
- :func:`load_fsdd` — real recordings for the ``full`` profiles: the Free Spoken Digit Dataset (6 speakers × 10
  digits × 50), prepared by ``data_scripts/fsdd.py``, as a :class:`SpeechSet` at 16 kHz.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import product
from pathlib import Path

import numpy as np
import torch

from . import files
from .files import DataError

SAMPLE_RATE = 16000
INSTALL = "sudo apt-get install -y --no-install-recommends espeak-ng"

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
         "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "house", "water", "music", "light", "door", "window", "phone", "table", "green", "yellow",
         "happy", "paper", "garden", "river", "rocket", "pencil", "monkey", "tiger", "silver", "winter")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m3", "m5", "f1", "f2", "f4")
ENGLISH_VOICES = tuple(f"{a}+{v}" for v in VARIANTS for a in ACCENTS)
FOREIGN_VOICES = ("de", "fr", "es", "it", "pl", "pt", "nl", "sv", "fi", "hu", "ru", "tr")


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str = "en-us"
    pitch: int = 50  # 0–99
    speed: int = 160  # words per minute

    def key(self, version: str) -> str:
        spec = f"{self.text}|{self.voice}|{self.pitch}|{self.speed}|{SAMPLE_RATE}|{version}"
        return hashlib.sha1(spec.encode()).hexdigest()[:20]


def require_espeak() -> None:
    """Raise ``DataError`` naming the install command when ``espeak-ng`` is not on PATH."""
    if shutil.which("espeak-ng") is None:
        raise DataError(f"espeak-ng is not installed (this notebook synthesises its speech with it): {INSTALL}")


@lru_cache(maxsize=1)
def espeak_version() -> str:
    require_espeak()
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("Data at")[0].strip()


def cache_dir() -> Path:
    from ..catalog import project_root

    return Path(os.environ.get("COMPANION_SPEECH_CACHE") or project_root() / "runs" / "cache" / "speech")


def _render(u: Utterance) -> np.ndarray:
    """One utterance through espeak-ng → float32 waveform at 16 kHz."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "u.wav"
        cmd = ["espeak-ng", "-v", u.voice, "-p", str(u.pitch), "-s", str(u.speed), "-w", str(path), u.text]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            raise DataError(f"espeak-ng failed for {u}: {done.stderr.strip() or done.returncode}")
        rate, wave = wavfile.read(path)
    wave = wave.astype(np.float32) / 32768.0
    g = np.gcd(SAMPLE_RATE, rate)
    return resample_poly(wave, SAMPLE_RATE // g, rate // g).astype(np.float32)


def synthesize(utterances: list[Utterance], workers: int = 2) -> list[np.ndarray]:
    """Waveforms (float32, 16 kHz, each its own length) of ``utterances``, from the disk cache where present.

    Missing ones are synthesised by ``workers`` espeak-ng processes at a time, under a lock on the request."""
    from filelock import FileLock

    require_espeak()
    version = espeak_version()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    keys = [u.key(version) for u in utterances]
    request = hashlib.sha1("".join(keys).encode()).hexdigest()[:20]
    with FileLock(str(root / f"request-{request}.lock")):
        missing = [(u, k) for u, k in zip(utterances, keys) if not (root / f"{k}.npy").is_file()]
        if missing:
            def make(item):
                u, k = item
                tmp = root / f"{k}.{os.getpid()}.tmp.npy"
                np.save(tmp, _render(u))
                os.replace(tmp, root / f"{k}.npy")

            with ThreadPoolExecutor(max(1, workers)) as pool:
                list(pool.map(make, missing))
    return [np.load(root / f"{k}.npy") for k in keys]


def fit_length(waves: list[np.ndarray], samples: int, align: str = "center") -> torch.Tensor:
    """Waveforms of any length → (N, samples): centred (or from the start, ``align="start"``), zero-padded or
    cropped."""
    if align not in ("center", "start"):
        raise ValueError(f"align must be 'center' or 'start', got {align!r}")
    out = torch.zeros(len(waves), samples)
    for i, w in enumerate(waves):
        w = torch.from_numpy(np.asarray(w, dtype=np.float32))
        if len(w) > samples:
            start = (len(w) - samples) // 2 if align == "center" else 0
            out[i] = w[start:start + samples]
        else:
            start = (samples - len(w)) // 2 if align == "center" else 0
            out[i, start:start + len(w)] = w
    return out


@dataclass
class SpeechSet:
    """Fixed-length clips with their ground truth; the index tensors point into ``texts`` and ``voices``."""

    waves: torch.Tensor  # (N, S)
    text: torch.Tensor  # (N,) index into texts
    voice: torch.Tensor  # (N,) index into voices
    pitch: torch.Tensor  # (N,) espeak pitch
    speed: torch.Tensor  # (N,) words per minute
    texts: tuple[str, ...]
    voices: tuple[str, ...]
    utterances: list[Utterance] = field(repr=False)

    def __len__(self) -> int:
        return len(self.waves)

    def subset(self, index) -> SpeechSet:
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return SpeechSet(self.waves[index], self.text[index], self.voice[index], self.pitch[index],
                         self.speed[index], self.texts, self.voices, [self.utterances[i] for i in index.tolist()])


def corpus(texts, voices, pitches=(40, 60), speeds=(140, 180), seconds: float = 1.0, workers: int = 2) -> SpeechSet:
    """Every combination text × voice × pitch × speed (in that nesting order), each clip centred in ``seconds``."""
    texts, voices = tuple(texts), tuple(voices)
    combos = list(product(range(len(texts)), range(len(voices)), pitches, speeds))
    utts = [Utterance(texts[t], voices[v], p, s) for t, v, p, s in combos]
    waves = fit_length(synthesize(utts, workers), int(round(seconds * SAMPLE_RATE)))
    cols = torch.tensor(combos, dtype=torch.long).reshape(-1, 4)
    return SpeechSet(waves, cols[:, 0], cols[:, 1], cols[:, 2], cols[:, 3], texts, voices, utts)


DIGITS = WORDS[10:20]  # "zero" … "nine"


def load_fsdd(data_dir: str = "", seconds: float = 1.0) -> SpeechSet:
    """The Free Spoken Digit Dataset as a :class:`SpeechSet`: texts are the digit words, voices the six speakers;
    8 kHz recordings resampled to 16 kHz and centred in ``seconds``. Raises ``DataError`` naming the command that
    prepares it when it is missing or damaged."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    files.require("fsdd", data_dir)
    folder = files.fsdd_dir(data_dir) / "recordings"
    names = sorted(line.split()[0] for line in (folder.parent / files.FSDD_MANIFEST).read_text().splitlines())
    speakers = tuple(sorted({n.split("_")[1] for n in names}))
    waves, rows = [], []
    for name in names:
        digit, speaker, _ = name[:-4].split("_")
        rate, wave = wavfile.read(folder / name)
        wave = wave.astype(np.float32) / 32768.0 if wave.dtype == np.int16 else wave.astype(np.float32)
        g = np.gcd(SAMPLE_RATE, rate)
        waves.append(resample_poly(wave, SAMPLE_RATE // g, rate // g).astype(np.float32))
        rows.append((int(digit), speakers.index(speaker)))
    cols = torch.tensor(rows, dtype=torch.long).reshape(-1, 2)
    zeros = torch.zeros(len(rows), dtype=torch.long)
    utts = [Utterance(DIGITS[t], speakers[v], 0, 0) for t, v in rows]
    return SpeechSet(fit_length(waves, int(round(seconds * SAMPLE_RATE))), cols[:, 0], cols[:, 1], zeros, zeros,
                     DIGITS, speakers, utts)
