"""Benchmark: scoring a masker × gain grid for one soundscape, feature-domain mixing against waveform mixing.

The soundscape-augmentation system of ``notebooks/soundscape_masker.ipynb`` scores every (masker, gain) candidate
with one pleasantness predictor (random weights here: they do not change the timing). Both pipelines start from the
soundscape's waveform and the maskers' mel power, computed once offline:

- waveform mixing (``sm.score_waveform``): soundscape + g·masker for every candidate, one STFT per mix, mel, predictor;
- feature domain (``sm.score_feature``): one STFT of the soundscape, ``P_s + g² P_m`` for every candidate, predictor.

Timings are interleaved (``runtime.interleaved_timings``, median of ``--repeats``); the ratio is printed beside the
ratio of counted FLOPs (``eval.count_flops`` plus ``sm.stft_flops`` for the FFTs the counter does not see). The
issue's target is a wall-clock ratio of at least 20× for 10 maskers × 25 gains of a 2 s clip on one thread.

Usage::

    python benchmarks/bench_soundscape.py [--maskers 10] [--gains 25] [--seconds 2] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

from companion import audio, runtime
from companion.eval import count_flops
from companion.methods.audio import soundscape_masker as sm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maskers", type=int, default=10)
    ap.add_argument("--gains", type=int, default=25, help="gains spread evenly over -12..+12 dB")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--n-mels", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    samples = int(round(args.seconds * audio.SAMPLE_RATE))
    g = torch.Generator().manual_seed(0)
    listener = sm.Listener()
    scape = sm.soundscapes(1, samples, torch.zeros(1, samples), g).waves[0]  # a traffic soundscape
    bank = sm.maskers(-(-args.maskers // len(sm.MASKER_KINDS)), samples, g, listener).waves[:args.maskers]
    gains = torch.linspace(-12.0, 12.0, args.gains)
    mel_fb = audio.mel_filterbank(args.n_mels)
    masker_mel = audio.power_spectrogram(bank) @ mel_fb  # offline, once
    torch.manual_seed(0)
    model = sm.Predictor(6 * args.n_mels + 1).eval()

    fns = {"waveform mixing": lambda: sm.score_waveform(model, scape, bank, masker_mel, gains, mel_fb),
           "feature domain": lambda: sm.score_feature(model, scape, masker_mel, gains, mel_fb)}
    n = args.maskers * args.gains
    flops = {"waveform mixing": count_flops(fns["waveform mixing"]) + sm.stft_flops(n + 1, samples),
             "feature domain": count_flops(fns["feature domain"]) + sm.stft_flops(1, samples)}
    times = runtime.interleaved_timings(fns, args.repeats)
    print(f"{args.maskers} maskers x {args.gains} gains = {n} candidates, {args.seconds} s clip, "
          f"{args.threads} thread(s)")
    for k in fns:
        print(f"{k:16s} {times[k] * 1e3:9.1f} ms  {flops[k] / 1e6:9.2f} MFLOPs")
    a, b = fns
    print(f"waveform / feature domain: {times[a] / times[b]:.1f}x wall-clock (target >= 20x), "
          f"{flops[a] / flops[b]:.1f}x counted FLOPs")


if __name__ == "__main__":
    main()
