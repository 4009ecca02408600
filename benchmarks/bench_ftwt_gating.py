"""Benchmark: how much of FTWT's counted FLOPs saving reaches CPU wall-clock time, at batch 1.

One dense toy VGG (a VGG-style ``SmallCNN``, three stages of two conv-BN-ReLU blocks) is trained on the shape
scenes, then FTWT-gated at each threshold (network and predictors fine-tuned, decoupled, as in the notebook). On
the same test scenes, one at a time, side by side in one run (timings interleaved round-robin, median of
``--repeats`` passes over ``--scenes`` scenes):

- ``dense``: the plain ``nn.Module`` forward of the base network;
- ``skip t``: ``ftwt_pruning.skipping_forward`` — each predictor reads the compact input, and every conv runs with its
  weights sliced to the scene's active input and output channels, so inactive channels are never computed;
- ``skip open``: the same sliced code path with every gate forced open (all channels), which separates the
  cost of slicing and predicting from the channels saved.

Printed per threshold: the wall-clock ratio (gated / dense) beside the counted FLOPs ratio (mean over the
scenes of ``gating.per_input_flops`` / dense ``count_flops``, predictors included). No target: the point is how
much of the saving survives Python and small-kernel overhead on a CPU.

Usage::

    python benchmarks/bench_ftwt_gating.py [--width 8] [--size 16] [--thresholds 0.8 0.9 0.95] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy

import torch

from companion import runtime
from companion.data.images import make_shapes
from companion.eval import count_flops
from companion.masking import gating
from companion.methods.parameter_masks import ftwt_pruning
from companion.models.cnn import SmallCNN
from companion.train import fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=8, help="channels of the first stage (stages: w, 2w, 4w)")
    ap.add_argument("--size", type=int, default=16, help="image side")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    ap.add_argument("--base-steps", type=int, default=300)
    ap.add_argument("--tune-steps", type=int, default=300)
    ap.add_argument("--scenes", type=int, default=64, help="test scenes per timed pass (batch 1 each)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_set, test = make_shapes(4000, args.size, seed=0), make_shapes(args.scenes, args.size, seed=1)
    w = args.width
    base = SmallCNN(3, 4, widths=((w, w), (2 * w, 2 * w), (4 * w, 4 * w)))
    fit(base, train_set.images, train_set.labels, args.base_steps, batch_size=64, lr=3e-3, seed=0,
                           device="cpu", progress=False)
    base = base.cpu().eval()
    x = test.images
    scenes = [x[i:i + 1] for i in range(len(x))]
    dense_flops = count_flops(lambda: base(x[:1]))

    gated = {}
    for t in args.thresholds:
        g = gating.GatedNet(copy.deepcopy(base), t, pool=1)
        fit(g, train_set.images, train_set.labels, args.tune_steps, loss_fn=gating.ftwt_loss,
                               batch_size=64, lr=1e-3, seed=1, device="cpu", progress=False,
                               parameters=[{"params": g.net.parameters()},
                                           {"params": g.predictors.parameters(), "lr": 0.03}])
        gated[t] = g.cpu().eval()
    open_gates = gating.GatedNet(copy.deepcopy(base), args.thresholds[0], pool=1).eval()  # predictors start open

    with torch.no_grad():
        for g in gated.values():  # the sliced forward is the masked forward
            assert torch.allclose(torch.cat([ftwt_pruning.skipping_forward(g, s) for s in scenes]), g(x), atol=1e-4)

        def run(fn):
            return lambda: [fn(s) for s in scenes]

        fns = {"dense": run(base), "skip open": run(lambda s: ftwt_pruning.skipping_forward(open_gates, s))}
        fns.update({f"skip {t}": run(lambda s, g=g: ftwt_pruning.skipping_forward(g, s)) for t, g in gated.items()})
        times = runtime.interleaved_timings(fns, args.repeats)
    flops = {t: gating.per_input_flops(g, x, head=g.net.fc).mean().item() for t, g in gated.items()}
    open_flops = gating.per_input_flops(open_gates, x, head=open_gates.net.fc).mean().item()

    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 1, {args.size}x{args.size} scenes, "
          f"widths {[b[0].out_channels for b in gating.blocks_of(base)]}, "
          f"dense {dense_flops / 1e6:.3f} MFLOPs; median of {args.repeats} passes over {len(scenes)} scenes")
    per = lambda k: times[k] / len(scenes) * 1e6
    print(f"  {'':12s} {'us/scene':>9s} {'wall ratio':>11s} {'FLOPs ratio':>12s}")
    print(f"  {'dense':12s} {per('dense'):9.1f} {1.0:11.3f} {1.0:12.3f}")
    print(f"  {'skip open':12s} {per('skip open'):9.1f} {times['skip open'] / times['dense']:11.3f} "
          f"{open_flops / dense_flops:12.3f}")
    for t in gated:
        k = f"skip {t}"
        print(f"  {k:12s} {per(k):9.1f} {times[k] / times['dense']:11.3f} {flops[t] / dense_flops:12.3f}   "
              f"(vs skip open: wall {times[k] / times['skip open']:.3f})")


if __name__ == "__main__":
    main()
