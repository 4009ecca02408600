"""Benchmark: one DiffusionGuard PGD step against one full-chain PGD step through a 10-step DDIM edit, in one run.

The same ``ToySD`` (the zoo's architecture; weights do not change the timing, so a random initialisation is used
unless ``--zoo`` loads the trained one), the same batch of 16×16 scenes and object masks. Both steps are one call
of :func:`companion.attacks.pgd_linf` with ``steps=1``:

- DiffusionGuard: one UNet forward + backward at the noisiest level (``guard_loss``);
- full chain (PhotoGuard's diffusion attack, ``chain_loss``): the whole ``--edit-steps`` DDIM edit with
  classifier-free guidance (two UNet evaluations per step, batched), differentiated end to end.

Timings are interleaved (``runtime.interleaved_timings``, median of ``--repeats``); the ratio is printed beside the
ratio of counted FLOPs (``eval.count_flops``).

Usage::

    python benchmarks/bench_diffusionguard.py [--batch 32] [--edit-steps 10] [--repeats 7] [--threads 1] [--zoo]
"""

from __future__ import annotations

import argparse

import torch

from companion import attacks, runtime, zoo
from companion.eval import count_flops
from companion.methods.diffusion_editing import diffusionguard as dg
from companion.models.toy_sd import ToySD


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--edit-steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--zoo", action="store_true", help="time the trained zoo toy_sd (builds it if missing)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.zoo:
        model = zoo.toy_sd()
    else:
        torch.manual_seed(0)
        model = ToySD().eval()
        for p in model.parameters():
            p.requires_grad_(False)
    sched = zoo.toy_sd_schedule()
    task = dg.edit_task(args.batch, seed=0)
    g = torch.Generator().manual_seed(0)
    guard = dg.guard_loss(model, dg.guard_level(sched, 4), g)
    chain = dg.chain_loss(model, sched, task.captions, args.edit_steps, args.guidance, g)
    eps, step = 8 / 255, 1 / 255

    def one_step(loss):
        return lambda: attacks.pgd_linf(loss, task.images, eps, 1, step, region=task.keep,
                                        draw=lambda s, j: task.keep)

    fns = {"DiffusionGuard step": one_step(guard), f"full-chain step ({args.edit_steps}-step DDIM)": one_step(chain)}
    flops = {k: count_flops(fn) for k, fn in fns.items()}
    times = runtime.interleaved_timings(fns, args.repeats)
    print(f"batch {args.batch}, {args.threads} thread(s), guidance {args.guidance}, "
          f"{'trained zoo' if args.zoo else 'random-init'} ToySD")
    for k in fns:
        print(f"{k:36s} {times[k] * 1e3:9.1f} ms  {flops[k] / 1e9:8.2f} GFLOPs")
    (a, b) = fns
    print(f"full chain / DiffusionGuard: {times[b] / times[a]:.1f}x wall-clock, "
          f"{flops[b] / flops[a]:.1f}x counted FLOPs")


if __name__ == "__main__":
    main()
