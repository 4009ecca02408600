"""Benchmark: decoding 1,000 glyph words, 3-step low-confidence MDM vs greedy AR with the KV cache.

Both readers are the same ``Seq2Seq`` (glyph encoder + decoder of the notebook's ``ci`` size), untrained: the
decode cost does not depend on the weights except through when decoding stops. So each AR batch runs exactly
as many cached passes as a perfect reader would (its longest word's letters + 1 for EOS), and MDM always runs
all ``--steps`` passes (a trained MDM reader may finish earlier): both choices favour AR. The only differences are
the decoder's attention (causal with the KV cache vs bidirectional) and the decoding loop. Decoding is timed
interleaved, ``--repeats`` times, and the median of each is reported with the ratio AR time / MDM time (target:
≥ 2x). ``--batch-size`` words go through each decoder call (1 = per-image latency, the paper's setting).

Usage::

    python benchmarks/bench_mdiff4str.py [--words 1000] [--batch-size 1] [--steps 3] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from companion.data import glyphs
from companion.methods.sequence import mdiff4str


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    words = glyphs.lexicon(2, 10)
    words = [words[i] for i in torch.randint(0, len(words), (args.words,), generator=g).tolist()]
    feats = glyphs.render(words, glyphs.prototypes(16, g), 14, generator=g).to(args.device)
    ar = mdiff4str.make_reader("ar", 14, 16, 10).to(args.device).eval()
    mdm = mdiff4str.make_reader("mdm", 14, 16, 10).to(args.device).eval()
    lengths = torch.tensor([len(w) + 1 for w in words])

    @torch.no_grad()
    def read_ar() -> float:
        start = time.perf_counter()
        for i in range(0, len(feats), args.batch_size):
            memory = ar.memory(ar.encode(feats[i:i + args.batch_size])[-1])
            ar.greedy(memory, int(lengths[i:i + args.batch_size].max()), glyphs.BOS)
        return time.perf_counter() - start

    times = {"AR": [], "MDM": []}
    for _ in range(args.repeats):
        times["AR"].append(read_ar())
        times["MDM"].append(mdiff4str.read_mdm(mdm, feats, args.steps, batch_size=args.batch_size)["seconds"])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.words} words, {args.batch_size} per call, {args.threads} thread(s), {args.device}:")
    print(f"  greedy AR (KV cache): {med['AR']:.3f} s ({1000 * med['AR'] / args.words:.2f} ms/word)")
    per_word = 1000 * med["MDM"] / args.words
    print(f"  MDM, {args.steps} low-confidence steps: {med['MDM']:.3f} s ({per_word:.2f} ms/word)")
    print(f"  AR / MDM = {med['AR'] / med['MDM']:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
