"""Synthetic two-channel piano rolls with a known key, and drawn inpainting masks (gaps and shapes).

A roll is a float tensor (2, pitches, steps) of 0/1: channel 0 the **melody**, channel 1 the **accompaniment**
(as the red and green channels of the piano-roll images in *Pictures of MIDI*); row ``p`` is the MIDI pitch
``low_pitch + p`` (row 0 the lowest), column ``t`` a sixteenth-note step. Each roll has a random key (tonic and
major or natural minor scale), a four-bar progression of the I, IV, V and vi triads of that key, an
accompaniment of block chords or arpeggios in the lower ``split`` rows, and a melody in the rows above: a
random walk on the scale with random note lengths, starting on a chord tone.

Masks follow the package convention **True = keep (known)**, shape (N, 2, pitches, steps); the region to
inpaint is ``~mask``. Gaps blank a time span of one channel; drawn shapes (rising, falling, V) blank a band of
the melody channel whose centre moves across the span, and the melody outside the band within that span is
known to be *silent* (the user erased it and drew where the notes should go): :func:`draw_masks` returns the
rolls with that erasure applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = ((0, 3, 4, 0), (0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4), (0, 3, 0, 4), (3, 4, 0, 5))
"""Scale degrees (0 = I, 3 = IV, 4 = V, 5 = vi) of each bar; one progression drawn per roll."""
MASK_KINDS = ("melody gap", "accompaniment gap", "rising", "falling", "V")
SHAPES = ("rising", "falling", "V")


@dataclass
class Rolls:
    """``rolls`` (N, 2, pitches, steps) float 0/1; ``scale`` (N, 12) bool pitch classes of each roll's key
    (relative to MIDI pitch class 0); ``tonic`` (N,) long; ``minor`` (N,) bool; ``low_pitch`` the MIDI pitch of
    row 0; ``split`` the first melody row (the accompaniment lives below it)."""

    rolls: torch.Tensor
    scale: torch.Tensor
    tonic: torch.Tensor
    minor: torch.Tensor
    low_pitch: int
    split: int

    def __len__(self) -> int:
        return len(self.rolls)

    def pitch_classes(self) -> torch.Tensor:
        """(pitches,) long: the pitch class of each row."""
        return (self.low_pitch + torch.arange(self.rolls.shape[2])) % 12


def scale_mask(tonic: int, minor: bool) -> torch.Tensor:
    """(12,) bool: the pitch classes of the major or natural-minor scale on ``tonic``."""
    out = torch.zeros(12, dtype=torch.bool)
    out[[(tonic + s) % 12 for s in (MINOR if minor else MAJOR)]] = True
    return out


def _scale_rows(pitches: int, low_pitch: int, tonic: int, minor: bool) -> list[int]:
    steps = MINOR if minor else MAJOR
    return [p for p in range(pitches) if (low_pitch + p - tonic) % 12 in steps]


def make_rolls(n: int, pitches: int = 32, steps: int = 64, bar: int = 16, low_pitch: int = 48, split: int = 14,
               generator: torch.Generator | None = None) -> Rolls:
    """``n`` rolls (see the module docstring); deterministic in the ``generator``'s seed.

    The accompaniment is one triad per bar (of ``bar`` steps) from the bar's degree of a drawn progression, in
    root position around the rows ``[0, split)``: held as a block chord (re-struck every half bar) or arpeggiated
    (root, third, fifth, third, two steps each). The melody walks the scale in rows ``[split, pitches)``: steps of
    -2..+2 scale degrees, notes of 2, 4 or 6 steps (some short rests), its first note in each bar a chord tone.
    """
    if steps % bar:
        raise ValueError(f"steps={steps} must be a multiple of bar={bar}")
    if not 12 <= split <= pitches - 7:
        raise ValueError(f"split={split} must leave an octave to the accompaniment and 7 rows to the melody "
                         f"(pitches={pitches})")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    rolls = torch.zeros(n, 2, pitches, steps)
    tonics = torch.randint(0, 12, (n,), generator=g)
    minors = torch.rand(n, generator=g) < 0.5
    styles = torch.rand(n, generator=g) < 0.5  # True = arpeggio
    progs = torch.randint(0, len(PROGRESSIONS), (n,), generator=g)
    for i in range(n):
        tonic, minor = int(tonics[i]), bool(minors[i])
        rows = _scale_rows(pitches, low_pitch, tonic, minor)
        low_rows = [p for p in rows if p < split]
        mel_rows = [p for p in rows if p >= split]
        for b in range(steps // bar):
            degree = PROGRESSIONS[int(progs[i])][b % 4]
            root_idx = next(k for k, p in enumerate(low_rows) if (low_pitch + p - tonic) % 12
                            == (MINOR if minor else MAJOR)[degree])
            triad = [low_rows[min(root_idx + k, len(low_rows) - 1)] for k in (0, 2, 4)]
            t0 = b * bar
            if bool(styles[i]):
                for k, j in enumerate(range(t0, t0 + bar, 2)):
                    rolls[i, 1, triad[(0, 1, 2, 1)[k % 4]], j:j + 2] = 1
            else:
                for j in range(t0, t0 + bar, bar // 2):
                    rolls[i, 1, triad, j:j + bar // 2 - 1] = 1
        pos = int(torch.randint(len(mel_rows) // 4, 3 * len(mel_rows) // 4, (1,), generator=g))
        t = 0
        while t < steps:
            length = (2, 4, 4, 6)[int(torch.randint(0, 4, (1,), generator=g))]
            if t % bar == 0:  # a bar's first note: the nearest chord tone of the bar's triad
                degree = PROGRESSIONS[int(progs[i])][(t // bar) % 4]
                tones = {(MINOR if minor else MAJOR)[(degree + k) % 7] for k in (0, 2, 4)}
                cands = [k for k, p in enumerate(mel_rows) if (low_pitch + p - tonic) % 12 in tones]
                pos = min(cands, key=lambda k: abs(k - pos))
            else:
                pos = min(max(pos + int(torch.randint(-2, 3, (1,), generator=g)), 0), len(mel_rows) - 1)
            end = min(t + length, steps, (t // bar + 1) * bar)
            rest = bool(torch.rand(1, generator=g) < 0.1) and end - t > 2
            rolls[i, 0, mel_rows[pos], t:end - (1 if rest else 0)] = 1
            t = end
    scale = torch.stack([scale_mask(int(tn), bool(mn)) for tn, mn in zip(tonics, minors)]) if n else \
        torch.zeros(0, 12, dtype=torch.bool)
    return Rolls(rolls, scale, tonics, minors, low_pitch, split)


def shape_centre(kind: str, length: int, low: float, high: float) -> torch.Tensor:
    """(length,) float: the drawn shape's centre row at each step of its span: ``rising`` from ``low`` to
    ``high``, ``falling`` from ``high`` to ``low``, ``V`` from ``high`` down to ``low`` and back up."""
    u = torch.linspace(0, 1, length)
    if kind == "rising":
        f = u
    elif kind == "falling":
        f = 1 - u
    elif kind == "V":
        f = (2 * u - 1).abs()
    else:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {kind!r}")
    return low + f * (high - low)


def draw_masks(rolls: Rolls, kinds, span: tuple[int, int] = (16, 48), band: int = 3,
               shape_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask per roll: ``kinds`` is a list (one name of :data:`MASK_KINDS` per roll).

    ``span`` = (start, end) steps of the masked region. Gaps blank that span of the melody or the
    accompaniment channel (all pitches). Shapes blank, in the melody channel, the rows within ``band`` of the
    shape's centre (:func:`shape_centre` between ``shape_range`` rows, default the melody register) at each
    step of the span, and the melody outside the band in the span is erased and kept silent.

    Returns (context, mask): ``context`` (N, 2, P, T) the rolls with that erasure, ``mask`` (N, 2, P, T) bool,
    True = keep.
    """
    kinds = list(kinds)
    if len(kinds) != len(rolls):
        raise ValueError(f"need one mask kind per roll: {len(kinds)} kinds for {len(rolls)} rolls")
    n, _, pitches, steps = rolls.rolls.shape
    t0, t1 = span
    if not 0 <= t0 < t1 <= steps:
        raise ValueError(f"span {span} must satisfy 0 <= start < end <= {steps}")
    lo, hi = shape_range if shape_range is not None else (rolls.split + band, pitches - 1 - band)
    context, mask = rolls.rolls.clone(), torch.ones(n, 2, pitches, steps, dtype=torch.bool)
    rows = torch.arange(pitches, dtype=torch.float)[:, None]  # (P, 1)
    for i, kind in enumerate(kinds):
        if kind == "melody gap":
            mask[i, 0, :, t0:t1] = False
        elif kind == "accompaniment gap":
            mask[i, 1, :, t0:t1] = False
        elif kind in SHAPES:
            centre = shape_centre(kind, t1 - t0, lo, hi)[None, :]  # (1, span)
            mask[i, 0, :, t0:t1] = (rows - centre).abs() > band
            context[i, 0, :, t0:t1] = 0
        else:
            raise ValueError(f"mask kind must be one of {', '.join(MASK_KINDS)}, got {kind!r}")
    return context, mask
