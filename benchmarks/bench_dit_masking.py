"""Benchmark: what 75 % deferred patch masking buys a DiT training step on the CPU, against no masking, in one run.

Same model (``companion.models.dit.DiT``: 16x16 images in 2x2 patches = 64 tokens, width 64, 4 backbone blocks,
caption cross-attention) and the same batch of random images and captions. Three training steps (forward,
backward, AdamW update; the microbudget_diffusion loss, ``MaskedDiffusion``), timed side by side, interleaved
round-robin (``runtime.interleaved_timings``), median of ``--repeats``:

- ``unmasked``: the DiT with its patch-mixer, every token through every block (what sampling runs);
- ``deferred``: the same DiT, the mixer on all tokens, then 75 % of the tokens dropped before the backbone —
  target >= 1.8x faster than unmasked;
- ``naive``: a DiT without the mixer, tokens dropped at the input (the cheapest step, shown alongside).

Each speed-up is printed beside the analytic FLOP ratio that ``companion.eval.count_flops`` counts for the two
steps' forward and backward (matmuls and attention; not the optimizer or element-wise work).

Usage::

    python benchmarks/bench_dit_masking.py [--batch 64] [--repeats 15] [--threads 1] [--ratio 0.75]
"""

from __future__ import annotations

import argparse

import torch

from companion import runtime
from companion.diffusion.gaussian import Schedule
from companion.eval import count_flops
from companion.methods.masked_image_modeling.microbudget_diffusion import MaskedDiffusion
from companion.models.dit import DiT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ratio", type=float, default=0.75)
    ap.add_argument("--mixer-depth", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 16, 16, generator=g) * 2 - 1
    captions = torch.randint(0, 9, (args.batch, 4), generator=g)
    sched = Schedule(200)
    torch.manual_seed(0)
    with_mixer = DiT(mixer_depth=args.mixer_depth).train()
    torch.manual_seed(0)
    without = DiT(mixer_depth=0).train()
    arms = {"unmasked": (with_mixer, 0.0), "deferred": (with_mixer, args.ratio), "naive": (without, args.ratio)}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (model, _) in arms.items()}

    def fwd_bwd(name):
        model, ratio = arms[name]
        objective = MaskedDiffusion(sched, ratio, seed=0)  # the same masks, levels and noise at every call

        def run():
            model.zero_grad(set_to_none=True)
            objective.gen.manual_seed(0)
            objective(model, x, captions).backward()
        return run

    def train_step(name):
        run = fwd_bwd(name)

        def step():
            run()
            optimizers[name].step()
        return step

    flops = {name: count_flops(fwd_bwd(name)) for name in arms}
    times = runtime.interleaved_timings({name: train_step(name) for name in arms}, args.repeats)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, 64 tokens, "
          f"{args.ratio:.0%} masking, mixer depth {args.mixer_depth}, median of {args.repeats}")
    for name in arms:
        print(f"  {name:9s} {times[name] * 1e3:7.1f} ms   {flops[name] / 1e9:6.2f} GFLOP (forward+backward)")
    for name, target in (("deferred", " (target >= 1.8x)"), ("naive", "")):
        print(f"  {name} vs unmasked: speed-up {times['unmasked'] / times[name]:.2f}x{target}   "
              f"FLOP ratio {flops['unmasked'] / flops[name]:.2f}x")


if __name__ == "__main__":
    main()
