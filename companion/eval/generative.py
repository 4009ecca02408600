"""Scores of generated and restored images: PSNR, the Fréchet distance (toy-FID in a small feature net's
features) and the held-out denoising loss per timestep bucket.

PSNR follows ``skimage.metrics.peak_signal_noise_ratio`` (10·log10(range² / MSE)) per image; the Fréchet distance
is FID's formula (Heusel et al. 2017) with the matrix square root from ``scipy.linalg.sqrtm``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB: a, b (N, C, ...) → (N,). With ``mask`` (broadcastable to a,
    True/1 = counted) the MSE is taken over the masked entries only (e.g. the background outside an edit)."""
    err = (a.float() - b.float()) ** 2
    if mask is None:
        mse = err.flatten(1).mean(dim=1)
    else:
        m = mask.float().expand_as(err)
        mse = (err * m).flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1).clamp(min=1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp(min=1e-12))


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2(ΣaΣb)^½) between two feature sets (N, D) (FID's formula)."""
    a, b = feats_a.double().cpu().numpy(), feats_b.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(linalg.sqrtm(cov_a @ cov_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@torch.no_grad()
def pooled_features(net, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """A classifier's last feature map (``forward_features``) averaged over space: (N, D)."""
    net.eval()
    return torch.cat([net.forward_features(images[i:i + batch_size]).mean(dim=(2, 3))
                      for i in range(0, len(images), batch_size)])


def toy_fid(images_a: torch.Tensor, images_b: torch.Tensor, featnet) -> float:
    """Fréchet distance between two image sets (N, 3, H, W) in [0, 1] in ``featnet``'s pooled features (the zoo's
    ``shapes_featnet``): a toy FID, comparable only between runs that use the same feature net and sample sizes."""
    return frechet_distance(pooled_features(featnet, images_a), pooled_features(featnet, images_b))


@torch.no_grad()
def denoising_loss_by_bucket(model, x0: torch.Tensor, sched, cond=None, buckets: int = 4,
                             generator: torch.Generator | None = None, batch_size: int = 256):
    """Held-out ε-prediction MSE per sample and timestep bucket: (N, buckets) — average over samples for the
    curve, keep the rows for paired intervals.

    The levels ``0..T-1`` are cut into ``buckets`` equal ranges; every sample is noised once per bucket at a level
    drawn uniformly inside it, with noise from ``generator`` (the same generator seed gives two models the same
    noisy inputs: a paired comparison). ``cond`` is sliced along the batch with ``x0`` (a tensor or a dict)."""
    T = sched.num_steps
    edges = torch.linspace(0, T, buckets + 1).round().long()
    g = generator or torch.Generator().manual_seed(0)
    n = len(x0)
    levels = torch.stack([torch.randint(int(edges[b]), int(edges[b + 1]), (n,), generator=g)
                          for b in range(buckets)], dim=1)  # (N, buckets)
    noise = torch.randn((buckets, *x0.shape), generator=g)
    out = torch.empty(n, buckets)
    for b in range(buckets):
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            t = levels[sl, b].to(x0.device)
            eps = noise[b, sl].to(x0)
            c = _slice(cond, sl)
            pred = model(sched.q_sample(x0[sl], t, eps), t, c)
            out[sl, b] = ((pred - eps) ** 2).flatten(1).mean(dim=1).cpu()
    return out


def _slice(cond, sl):
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: _slice(v, sl) for k, v in cond.items()}
    return cond[sl]
