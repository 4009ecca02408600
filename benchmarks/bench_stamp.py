"""Benchmark: STAMP's one-pass mask prediction vs autoregressive patch-label decoding with a KV cache, in one run.

One ``stamp.Grounder`` (the notebook's ``ci`` size: a 2-layer, width-64 ``ToyMLLM``; the weights do not change the
timing, so a random initialisation is used — the AR decoder always runs its 64 passes), the same inputs
(``--image-grid``² image tokens, a 5-word expression, ``<seg>``, 64 patches):

- STAMP: [prefix, 64 ``[MASK]``] in one forward pass under the hybrid attention mask (``stamp.stamp_decode``);
- AR: the prefix pass, then one single-position pass per further patch through the GPT's ``KVCache``, greedy over
  ``<bg>``/``<fg>`` (``stamp.ar_decode``): 64 passes.

Timings are interleaved (``runtime.interleaved_timings``, median of ``--repeats``); the ratio AR / STAMP is printed
beside the counted FLOPs (``eval.count_flops``) — the cached AR decoder does about as many FLOPs, so the speed-up
is the number of sequential passes, not arithmetic. Target: >= 10x at batch 1 (one request, the paper's setting).

Usage::

    python benchmarks/bench_stamp.py [--batch 1] [--image-grid 4] [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

from companion import runtime
from companion.data import words
from companion.eval import count_flops
from companion.methods.segmentation import stamp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--image-grid", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = stamp.Grounder(image_len=args.image_grid ** 2).to(args.device).eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, args.image_grid ** 2, 64, generator=g).to(args.device)
    patches = torch.randn(args.batch, 64, 64, generator=g).to(args.device)
    text = words.encode(["circle left of red square"] * args.batch, stamp.VOCAB, stamp.TEXT_LEN).to(args.device)

    fns = {"STAMP, one pass": lambda: stamp.stamp_decode(model, image, patches, text),
           "AR, KV cache": lambda: stamp.ar_decode(model, image, patches, text)}
    passes = {k: fn()[1] for k, fn in fns.items()}
    flops = {k: count_flops(fn) for k, fn in fns.items()}
    times = runtime.interleaved_timings(fns, args.repeats)
    print(f"batch {args.batch}, {args.image_grid ** 2} image tokens + {stamp.TEXT_LEN} words + <seg> + 64 patches, "
          f"{args.threads} thread(s), {args.device}, {sum(p.numel() for p in model.parameters()):,} parameters")
    for k in fns:
        print(f"  {k:16s} {passes[k]:3d} passes {times[k] * 1e3:9.2f} ms  {flops[k] / 1e6:8.2f} MFLOPs")
    a, b = fns
    print(f"AR / STAMP: {times[b] / times[a]:.1f}x wall-clock (target >= 10x), "
          f"{flops[b] / flops[a]:.2f}x counted FLOPs")


if __name__ == "__main__":
    main()
