"""Benchmark: plain forward vs layer-masked forward of a ResNet-18-shaped CNN on the CPU.

``companion.models.resnet18_like`` (3x3 stem, no stem pooling), eval mode, ``torch.no_grad``, a batch of
random images with about 30 % of the pixels removed in random square blocks (an 8x8 grid of cells, each
removed with probability 0.3). For each variant the plain and the layer-masked forward are timed
interleaved in the same run, best of ``--repeats``; the ratio is layer-masked / plain (target <= 1.3x):

- NCHW, eager
- channels_last (model and input), eager
- with ``--reference``: the literal, unoptimised layer masking (channels_last, eager), for comparison
- with ``--compile``: both forwards under ``torch.compile`` (NCHW and channels_last); the first call,
  which compiles, is reported separately.

Usage::

    python benchmarks/bench_layer_masking.py [--batch 64] [--size 64] [--repeats 3] [--threads 1]
                                             [--compile] [--reference]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from companion.masking.layer import layer_masked
from companion.models import resnet18_like


def block_mask(n: int, size: int, cells: int = 8, p: float = 0.3, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) bool, True = keep: a cells x cells grid, each cell removed with probability p."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(n, 1, cells, cells, generator=g) >= p
    return F.interpolate(keep.float(), size=(size, size), mode="nearest") > 0


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_variant(name, plain, masked, x, mask, repeats, rows, ref_out):
    t0 = time.perf_counter()
    plain(x)
    t_plain_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = masked(x, mask)
    t_masked_first = time.perf_counter() - t0
    t_plain, t_masked = float("inf"), float("inf")
    for _ in range(repeats):  # interleaved, so both see the same machine load
        t_plain = min(t_plain, best_time(lambda: plain(x), 1))
        t_masked = min(t_masked, best_time(lambda: masked(x, mask), 1))
    diff = (out - ref_out).abs().max().item() if ref_out is not None else 0.0
    rows.append((name, t_plain, t_masked, t_masked / t_plain, t_plain_first, t_masked_first, diff))
    print(f"  done: {name}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time both forwards under torch.compile")
    parser.add_argument("--reference", action="store_true", help="also time the literal, unoptimised version")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = resnet18_like(num_classes=10).eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    mask = block_mask(args.batch, args.size)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, {args.size}x{args.size}, "
          f"{1 - mask.float().mean().item():.0%} of pixels removed, best of {args.repeats}", flush=True)

    rows: list[tuple] = []
    with torch.no_grad():
        ref = run_variant("NCHW, eager", model, layer_masked(model), x, mask, args.repeats, rows, None)
        run_variant("channels_last, eager", model_cl, layer_masked(model_cl), x_cl, mask, args.repeats, rows, ref)
        if args.reference:
            run_variant("channels_last, eager, literal (reference=True)", model_cl,
                        layer_masked(model_cl, reference=True), x_cl, mask, args.repeats, rows, ref)
        if args.compile:
            run_variant("NCHW, torch.compile", torch.compile(model), layer_masked(model, compile=True),
                        x, mask, args.repeats, rows, ref)
            run_variant("channels_last, torch.compile", torch.compile(model_cl),
                        layer_masked(model_cl, compile=True), x_cl, mask, args.repeats, rows, ref)

    print()
    print("| variant | plain forward | layer-masked | ratio | first call plain / masked | max |diff| vs NCHW eager |")
    print("|---|---|---|---|---|---|")
    for name, tp, tm, ratio, fp, fm, diff in rows:
        print(f"| {name} | {tp:.3f} s | {tm:.3f} s | {ratio:.2f}x | {fp:.1f} s / {fm:.1f} s | {diff:.1e} |")


if __name__ == "__main__":
    main()
