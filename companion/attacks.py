"""Attacks on a model's inputs: L∞ PGD on an input (averaged over random masks where asked), a universal
perturbation shared by all inputs, and white-box optimisation of continuous click coordinates (TETRIS).

:func:`pgd_linf` is projected gradient ascent (or descent) with sign steps (Madry et al. 2018) on any tensor
input — images, spectrograms, waveforms. The perturbation lives in an L∞ ball of radius ``eps`` around the clean
input, optionally only inside a ``region`` (elsewhere it stays exactly zero), and the perturbed input stays inside
``bounds``. When a loss depends on a random mask (an inpainting mask, a masked span), ``draw`` supplies a fresh
mask per gradient sample and the gradient is averaged over ``samples`` of them per step (expectation over
transformations, DiffusionGuard's mask augmentation); each step costs ``samples`` forward+backward passes. On
log-mel features with ``bounds=None`` and a band ``region`` it is a feature-space attack limited to mel bins.

:func:`universal_perturbation` optimises one perturbation for all inputs with Adam, clamped to ``[-eps, eps]``
and zero outside a ``region`` (ALMGuard's shortcut-activating perturbation restricted to chosen mel bins).

:func:`optimise_clicks` moves one click per image along the gradient of a differentiable score (for a
segmenter: soft IoU of its prediction, computed through the Gaussian click map of
:func:`companion.data.clicks.click_maps`), by normalised steps decaying linearly from ``step_size`` pixels,
descending for the worst click and ascending for the best, and after every step projects the click back inside
its allowed region (:func:`project_inside`). Every iterate's hard score comes from the same forward pass, so the
search returns the most extreme iterate at a cost of ``steps`` forward+backward passes plus one forward for the
last position.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage


def project_inside(coords: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Coordinates (N, 2) as (x, y) → the same where their pixel lies in ``regions`` (N, H, W) bool, else the
    centre of the region's nearest pixel (Euclidean, pixel centres). Every region must be non-empty."""
    r = np.asarray(regions.cpu(), dtype=bool)
    n, h, w = r.shape
    col = coords[:, 0].detach().floor().long().clamp(0, w - 1)
    row = coords[:, 1].detach().floor().long().clamp(0, h - 1)
    inside_image = (coords[:, 0] >= 0) & (coords[:, 0] < w) & (coords[:, 1] >= 0) & (coords[:, 1] < h)
    out = coords.detach().clone()
    for i in range(n):
        if inside_image[i] and r[i, row[i], col[i]]:
            continue
        if not r[i].any():
            raise ValueError(f"region {i} is empty")
        _, (iy, ix) = ndimage.distance_transform_edt(~r[i], return_indices=True)
        out[i, 0], out[i, 1] = ix[row[i], col[i]] + 0.5, iy[row[i], col[i]] + 0.5
    return out


def optimise_clicks(score_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], start: torch.Tensor,
                    regions: torch.Tensor, steps: int, step_size: float = 1.0,
                    maximise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Search one click per image. ``score_fn(coords (N, 2))`` returns (differentiable score (N,), hard score
    (N,)); ``start`` (N, 2) is projected first. Normalised gradient steps of
    ``step_size · (steps - k) / steps`` px at step k (descent, or ascent when ``maximise``), each followed by
    :func:`project_inside`. Returns the most extreme iterate by hard score: (coords (N, 2), hard score (N,)),
    after ``steps`` forward+backward passes and one forward."""
    sign = 1.0 if maximise else -1.0
    coords = project_inside(start, regions)
    best_coords, best = coords.clone(), None
    for step in range(steps + 1):
        x = coords.clone().requires_grad_(step < steps)
        if step < steps:
            soft, hard = score_fn(x)
            (grad,) = torch.autograd.grad(soft.sum(), x)
        else:
            with torch.no_grad():
                _, hard = score_fn(x)
        hard = hard.detach()
        better = torch.ones_like(hard, dtype=torch.bool) if best is None else sign * (hard - best) > 0
        best = hard.clone() if best is None else torch.where(better, hard, best)
        best_coords[better] = coords[better]
        if step < steps:
            direction = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            coords = project_inside(coords + sign * step_size * (steps - step) / steps * direction, regions)
    return best_coords, best


def pgd_linf(loss_fn: Callable, x: torch.Tensor, eps: float, steps: int, step_size: float, *,
             region: torch.Tensor | None = None, draw: Callable[[int, int], object] | None = None,
             samples: int = 1, bounds: tuple[float, float] | None = (0.0, 1.0), maximise: bool = True,
             random_start: bool = False, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L∞ projected gradient steps on ``x`` (N, ...); returns (the perturbed input, the mean loss per step (steps,)).

    ``loss_fn(x_adv, mask)`` returns a loss per item (N,) or a scalar (its sum is differentiated); ``mask`` is
    ``draw(step, sample)`` (``None`` without ``draw``). Each step averages the gradient over ``samples`` draws,
    then moves ``step_size · sign(gradient)`` (up when ``maximise``), keeps the perturbation only inside
    ``region`` (bool, broadcast to ``x``; ``None`` = everywhere), clips it to ``[-eps, eps]`` and the input to
    ``bounds``. ``random_start`` starts from uniform noise in the ball (inside the region), drawn on
    ``generator``. The logged loss is the one before each step's update.
    """
    if eps < 0 or step_size <= 0 or steps < 0 or samples < 1:
        raise ValueError(f"need eps >= 0, step_size > 0, steps >= 0, samples >= 1; got {eps}, {step_size}, "
                         f"{steps}, {samples}")
    x = x.detach()
    keep = None if region is None else region.to(x.device).expand_as(x)

    def project(delta: torch.Tensor) -> torch.Tensor:
        delta = delta.clamp(-eps, eps)
        if keep is not None:
            delta = torch.where(keep, delta, torch.zeros_like(delta))
        adv = x + delta
        return adv if bounds is None else adv.clamp(*bounds)

    delta = torch.zeros_like(x)
    if random_start:
        u = torch.rand(x.shape, generator=generator, device="cpu" if generator is None else generator.device)
        delta = (2 * u.to(x) - 1) * eps
    adv = project(delta)
    sign = 1.0 if maximise else -1.0
    history = torch.zeros(steps)
    for step in range(steps):
        grad = torch.zeros_like(x)
        for j in range(samples):
            probe = adv.clone().requires_grad_(True)
            loss = loss_fn(probe, None if draw is None else draw(step, j)).sum()
            (g,) = torch.autograd.grad(loss, probe)
            grad += g / samples
            history[step] += loss.detach().cpu() / (samples * len(x))
        adv = project(adv + sign * step_size * grad.sign() - x)
    return adv.detach(), history


def universal_perturbation(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                           eps: float, steps: int, lr: float = 1e-2, batch_size: int = 32,
                           region: torch.Tensor | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One perturbation shared by every input (a universal perturbation, e.g. ALMGuard's shortcut-activating one).

    Adam steps on ``delta`` (1, ...) over seeded minibatches of ``inputs`` (N, ...): ``loss_fn(x + delta, idx)``
    (idx the batch's rows, for their targets) is **minimised**; after each step ``delta`` is clamped to
    ``[-eps, eps]`` and zeroed outside ``region`` (bool, broadcast to one input; ``None`` = everywhere), and the
    gradient is masked the same way. Returns (delta (1, ...), the loss per step (steps,)).
    """
    if eps < 0 or steps < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"need eps >= 0, steps >= 0, lr > 0, batch_size >= 1; got {eps}, {steps}, {lr}, {batch_size}")
    inputs = inputs.detach()
    keep = torch.ones(1, *inputs.shape[1:], dtype=torch.bool, device=inputs.device)
    if region is not None:
        keep = keep & region.to(inputs.device).expand_as(keep)
    delta = torch.zeros(1, *inputs.shape[1:], device=inputs.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = torch.zeros(steps)
    for step in range(steps):
        idx = torch.randint(0, len(inputs), (min(batch_size, len(inputs)),), generator=g)
        loss = loss_fn(inputs[idx.to(inputs.device)] + delta * keep, idx).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        delta.grad = delta.grad * keep
        opt.step()
        with torch.no_grad():
            delta.copy_(delta.clamp(-eps, eps) * keep)
        history[step] = loss.detach().cpu()
    return delta.detach(), history
