"""Benchmark: what 75 % masking buys a tiny MAE on the CPU, against 0 % masking, in one run.

Same model (``companion.models.mae_tiny``: d=64, 4 encoder + 2 decoder blocks, 32x32 images in 4x4
patches = 64 tokens) and the same batch of random images. Timings are interleaved (0 %, 75 %, 0 %, ...)
and the median of ``--repeats`` is reported:

(a) the encoder's forward + backward alone — target >= 3x (the token ratio 65/17 ≈ 3.8x is the limit);
(b) the whole MAE training step (encoder, mask tokens + un-shuffle, decoder, loss, backward, AdamW step)
    against the FLOP ratio that ``torch.utils.flop_counter.FlopCounterMode`` counts for the two steps'
    forward + backward (it counts matmuls/attention, not the optimizer or element-wise ops) — target
    >= 0.85 of the FLOP ratio.

Then a breakdown of the step (forward / backward / optimizer, and the encoder / decoder / loss pieces of
the forward) and of the gather/scatter time from the profiler, so a short (b) can be explained.

Usage::

    python benchmarks/bench_mae.py [--batch 128] [--repeats 15] [--threads 1] [--fused]
"""

from __future__ import annotations

import argparse

import torch

from companion import runtime
from companion.eval import count_flops
from companion.models import mae_tiny

RATIOS = (0.0, 0.75)


def step_breakdown(model, x, ratio: float, opt, repeats: int) -> dict:
    """Median seconds of the pieces of one training step at ``ratio`` (same mask every call)."""
    g = lambda: torch.Generator().manual_seed(0)
    with torch.no_grad():
        enc = model.forward_encoder(x, ratio=ratio, generator=g())
        pred = model.forward_decoder(enc.latent, enc.ids_restore)
    latent = enc.latent.detach().requires_grad_()

    def enc_fwd():
        with torch.no_grad():
            model.forward_encoder(x, ratio=ratio, generator=g())

    def enc_fwd_bwd():
        model.zero_grad(set_to_none=True)
        model.forward_encoder(x, ratio=ratio, generator=g()).latent.square().mean().backward()

    def dec_fwd():
        with torch.no_grad():
            model.forward_decoder(latent, enc.ids_restore)

    def dec_fwd_bwd():
        model.zero_grad(set_to_none=True)
        model.forward_decoder(latent, enc.ids_restore).square().mean().backward()

    def loss_fwd():
        with torch.no_grad():
            model.forward_loss(x, pred, enc.visible)

    def whole_fwd():
        model(x, ratio, generator=g())

    def whole_fwd_bwd():
        model.zero_grad(set_to_none=True)
        model(x, ratio, generator=g())[0].backward()

    whole_fwd_bwd()  # gradients in place for the optimizer
    return runtime.interleaved_timings({"encoder fwd": enc_fwd, "encoder fwd+bwd": enc_fwd_bwd, "decoder fwd": dec_fwd,
                        "decoder fwd+bwd": dec_fwd_bwd, "loss fwd": loss_fwd, "whole fwd": whole_fwd,
                        "whole fwd+bwd": whole_fwd_bwd, "AdamW step": opt.step}, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fused", action="store_true", help="also time AdamW(fused=True)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mae_tiny().train()
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seed = torch.Generator()
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e3:.0f} k parameters, median of {args.repeats}")

    # (a) encoder forward + backward alone -----------------------------------------------------------------
    def encoder_step(ratio):
        def run():
            model.zero_grad(set_to_none=True)
            model.forward_encoder(x, ratio=ratio, generator=seed.manual_seed(0)).latent.square().mean().backward()
        return run

    enc_t = runtime.interleaved_timings({r: encoder_step(r) for r in RATIOS}, args.repeats)
    enc_flops = {r: count_flops(encoder_step(r)) for r in RATIOS}
    print("\n(a) encoder forward+backward")
    for r in RATIOS:
        print(f"  mask {r:4.0%}: {enc_t[r] * 1e3:7.1f} ms   {enc_flops[r] / 1e9:6.2f} GFLOP")
    print(f"  speed-up {enc_t[0.0] / enc_t[0.75]:.2f}x (target >= 3x)   "
          f"FLOP ratio {enc_flops[0.0] / enc_flops[0.75]:.2f}x")

    # (b) whole training step -----------------------------------------------------------------------------
    def train_step(ratio, opt):
        def run():
            loss, _, _ = model(x, ratio, generator=seed.manual_seed(0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    def fwd_bwd(ratio):
        def run():
            model.zero_grad(set_to_none=True)
            model(x, ratio, generator=seed.manual_seed(0))[0].backward()
        return run

    optimizers = {"AdamW": torch.optim.AdamW(model.parameters(), lr=1e-4)}
    if args.fused:
        optimizers["AdamW(fused)"] = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_flops = {r: count_flops(fwd_bwd(r)) for r in RATIOS}
    flop_ratio = step_flops[0.0] / step_flops[0.75]
    print("\n(b) whole MAE training step (decoder + AdamW)")
    for r in RATIOS:
        print(f"  mask {r:4.0%}: {step_flops[r] / 1e9:6.2f} GFLOP (forward+backward)")
    for name, opt in optimizers.items():
        t = runtime.interleaved_timings({r: train_step(r, opt) for r in RATIOS}, args.repeats)
        speed = t[0.0] / t[0.75]
        print(f"  {name:12s} 0 %: {t[0.0] * 1e3:7.1f} ms  75 %: {t[0.75] * 1e3:7.1f} ms  speed-up {speed:.2f}x  "
              f"FLOP ratio {flop_ratio:.2f}x  -> {speed / flop_ratio:.2f} of the FLOP ratio (target >= 0.85)")

    # breakdown -------------------------------------------------------------------------------------------
    print("\nbreakdown of one step (ms, median)")
    opt = optimizers["AdamW"]
    for r in RATIOS:
        parts = step_breakdown(model, x, r, opt, args.repeats)
        print(f"  mask {r:4.0%}: " + "  ".join(f"{k} {v * 1e3:.1f}" for k, v in parts.items()))
    # where the FLOPs go: the decoder runs on all 1+L tokens whatever the ratio, so it caps the step's ratio
    for r in RATIOS:
        enc_share = enc_flops[r] / step_flops[r]
        print(f"  mask {r:4.0%}: encoder {enc_share:.0%} of the step's FLOPs, decoder + loss {1 - enc_share:.0%}")

    # gather / scatter / index ops in one 75 % step, from the profiler
    from torch.profiler import ProfilerActivity, profile

    step = train_step(0.75, opt)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    movers = [e for e in events if any(s in e.key for s in ("gather", "scatter", "index", "argsort", "sort"))]
    moved = sum(e.self_cpu_time_total for e in movers)
    print(f"\n75 % step, profiler: gather/scatter/index/sort ops take {moved / total:.1%} of self CPU time "
          f"({', '.join(sorted({e.key for e in movers}))})")
    print("top ops by self CPU time:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        print(f"  {e.key:40s} {e.self_cpu_time_total / total:6.1%}  ({e.count // 3} calls/step)")


if __name__ == "__main__":
    main()
