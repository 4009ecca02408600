"""Benchmark: LIME samples per second, captum's plain ``Lime`` vs ``companion.masking.explain.lime_segments``.

One 32x32 RGB image, 40 segments (a 5x8 grid), a ``companion.models.SmallCNN``, one CPU thread by
default. Three explainers, timed interleaved in the same run:

(a) ``captum.attr.Lime`` on the raw image: removed segments set to grey (``baselines=0.5``,
    ``feature_mask=segments``); the reference.
(b) ``lime_segments(..., "layer")``: LIME over the segment-keep vector, layer masking in the CNN.
(c) ``lime_segments(..., "grey")``: the same pixel work as (a) but through our wrapper.

(c)/(a) is the cost of the wrapper alone, (b)/(c) the cost of layer masking, and (b)/(a) is the
headline ratio (target: >= 0.8x). All three use the same surrogate (ridge), ``n_samples``,
``perturbations_per_eval`` and target (softmax probability of the unmasked prediction).

Usage::

    python benchmarks/bench_lime.py [--n-samples 1000] [--repeats 5] [--batch-size 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import Lime

from companion.masking.explain import lime_segments, predict
from companion.models import SmallCNN


def grid_segments(h: int = 32, w: int = 32, rows: int = 5, cols: int = 8) -> torch.Tensor:
    """(h, w) long segment map: a rows x cols grid, ids row-major (``rows * cols`` segments)."""
    r = torch.arange(h) * rows // h
    c = torch.arange(w) * cols // w
    return r[:, None] * cols + c[None, :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(1, 3, 32, 32)
    segments = grid_segments()
    n_segments = int(segments.max()) + 1
    target = predict(model, x)

    def plain_lime() -> torch.Tensor:
        lime = Lime(lambda inp: model(inp).softmax(-1), interpretable_model=SkLearnRidge(alpha=1.0))
        with torch.no_grad():
            torch.manual_seed(0)
            coefs = lime.attribute(
                x,
                baselines=0.5,
                target=target,
                feature_mask=segments[None, None],
                n_samples=args.n_samples,
                perturbations_per_eval=args.batch_size,
                return_input_shape=False,
            )
        return coefs.reshape(-1)

    def ours(strategy: str):
        def run() -> torch.Tensor:
            return lime_segments(
                model,
                x,
                segments,
                strategy,
                args.n_samples,
                seed=0,
                batch_size=args.batch_size,
                target=target,
            )

        return run

    runs = {"(a) captum Lime, grey": plain_lime, "(b) lime_segments layer": ours("layer")}
    runs["(c) lime_segments grey"] = ours("grey")
    attrs = {name: fn() for name, fn in runs.items()}  # warm-up (imports, allocator, sklearn)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)

    print(
        f"LIME on a 32x32 image, {n_segments} segments, SmallCNN, {args.n_samples} samples, "
        f"batch {args.batch_size}, {torch.get_num_threads()} thread(s), median of {args.repeats}"
    )
    print("  samples/s by wall-clock time and by process CPU time (steadier on a busy machine)")
    rate = {name: args.n_samples / statistics.median(t) for name, t in wall.items()}
    cpu_rate = {name: args.n_samples / statistics.median(t) for name, t in cpu.items()}
    for name in runs:
        print(f"  {name:<28} {rate[name]:7.0f} wall  {cpu_rate[name]:7.0f} cpu")
    (a, b, c), (ca, cb, cc) = rate.values(), cpu_rate.values()
    print(f"  ratio (b)/(a) layer vs captum  {b / a:5.2f}x wall  {cb / ca:5.2f}x cpu  (target >= 0.8x)")
    print(f"  ratio (c)/(a) wrapper cost     {c / a:5.2f}x wall  {cc / ca:5.2f}x cpu")
    print(f"  ratio (b)/(c) layer masking    {b / c:5.2f}x wall  {cb / cc:5.2f}x cpu")
    # sanity: (a) and (c) draw the same samples (same seed) and hide segments the same way; only the
    # LIME kernel differs (cosine on pixels vs on keep vectors), so the rankings should agree closely
    corr = torch.corrcoef(torch.stack([attrs["(a) captum Lime, grey"], attrs["(c) lime_segments grey"]]))
    print(f"  corr(attr (a), attr (c))       {corr[0, 1].item():6.3f}")


if __name__ == "__main__":
    main()
