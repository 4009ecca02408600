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
                           eps: float, epochs: int = 1, max_iter: int = 10, lr: float = 1e-2, batch_size: int = 1,
                           region: torch.Tensor | None = None, stop_below: float | None = None,
                           init_std: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """One perturbation shared by every input (a universal perturbation; ALMGuard's shortcut-activating one is
    trained this way in its official code).

    ``delta`` (1, ...) starts at ``init_std``·N(0, 1) inside ``region`` and is optimised by one Adam (its state
    kept throughout) over ``epochs`` passes through ``inputs`` (N, ...) in a seeded order, ``batch_size`` items at
    a time: on each batch it takes up to ``max_iter`` steps on ``loss_fn(x + delta, idx)`` (idx: the batch's rows,
    for their targets; a scalar to **minimise**), moving on early once the loss is below ``stop_below``. The
    gradient is zeroed outside ``region`` (bool, broadcast to one input; ``None`` = everywhere) and after each step
    ``delta`` is clamped to ``[-eps, eps]`` and zeroed outside it. Returns (delta, the loss of every step taken).
    """
    if eps < 0 or epochs < 0 or max_iter < 1 or lr <= 0 or batch_size < 1:
        raise ValueError(f"need eps >= 0, epochs >= 0, max_iter >= 1, lr > 0, batch_size >= 1; got {eps}, {epochs}, "
                         f"{max_iter}, {lr}, {batch_size}")
    inputs = inputs.detach()
    g = torch.Generator().manual_seed(seed)
    band = torch.ones(1, *inputs.shape[1:], device=inputs.device)
    if region is not None:
        band = band * region.to(inputs.device).expand_as(band).to(band.dtype)
    delta = init_std * torch.randn(1, *inputs.shape[1:], generator=g).to(band) * band
    delta.requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    losses: list[float] = []
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=g)
        for start in range(0, len(inputs), batch_size):
            idx = order[start:start + batch_size]
            x = inputs[idx.to(inputs.device)]
            for _ in range(max_iter):
                loss = loss_fn(x + delta, idx)
                losses.append(loss.item())
                if stop_below is not None and loss.item() < stop_below:
                    break
                (grad,) = torch.autograd.grad(loss, delta)
                delta.grad = grad * band
                opt.step()
                with torch.no_grad():
                    delta.copy_(delta.clamp(-eps, eps) * band)
    return delta.detach(), losses
