"""Gaussian diffusion: noise schedules, epsilon / x0 prediction, the training loss, DDPM and DDIM sampling with hooks.

Tensors are (N, C, ...) of any trailing shape; timesteps ``t`` are (N,) long in ``[0, T)``, where level ``t`` has
signal fraction ``alpha_bars[t]`` (level 0 is the least noisy, "clean" is one step below it). Models are called as
``model(x_t, t, cond)`` and return a tensor shaped like ``x_t``: the predicted noise (``prediction="eps"``) or the
predicted clean sample (``prediction="x0"``).

The sampler's hooks, all applied after every step (the order below):

- ``mask_noise``: extra Gaussian noise of this standard deviation added inside the unknown region (everywhere when
  there is no ``known_mask``), never after the last step;
- ``known`` / ``known_mask``: inpainting by replacement, the known entries replaced by ``known`` noised to the level
  the step reached (exactly ``known`` at the end); ``known`` may instead be a function ``known(level)`` giving
  the known entries at that level (``-1`` = clean), e.g. a DDIM inversion's latents (blended editing);
- ``project(x, cond)``: any projection, e.g. PDPP's conditioned entries written back (also applied to the start);
- ``resample`` / ``jump_length``: RePaint's schedule (Lugmayr et al. 2022, ``get_schedule_jump``): after descending
  ``jump_length`` steps, go back up ``jump_length`` steps by forward noising and redo them, ``resample - 1`` extra
  times per block; ``resample=1`` is plain replacement and draws exactly the same random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import runtime


class Schedule:
    """A variance schedule of ``num_steps`` levels: ``betas``, ``alphas``, ``alpha_bars`` (T,) float32.

    ``kind="cosine"``: Nichol & Dhariwal's ``alpha_bar(s) = cos((s/T + 0.008)/1.008 * pi/2)**2`` normalised to 1 at
    s=0, betas clipped to 0.999 (PDPP's ``cosine_beta_schedule``). ``kind="linear"``: Ho et al.'s betas from 1e-4 to
    0.02, scaled by 1000/T so that any T spans the same noise range.
    """

    def __init__(self, num_steps: int = 200, kind: str = "cosine"):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        T = num_steps
        if kind == "cosine":
            s = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
            f = f / f[0]
            betas = (1 - f[1:] / f[:-1]).clamp(0, 0.999)
        elif kind == "linear":
            scale = 1000 / T
            betas = torch.linspace(1e-4 * scale, min(0.02 * scale, 0.999), T, dtype=torch.float64)
        else:
            raise ValueError(f"kind must be 'cosine' or 'linear', got {kind!r}")
        alpha_bars = torch.cumprod(1 - betas, 0)
        self.num_steps, self.kind = T, kind
        self.betas = betas.float()
        self.alphas = (1 - betas).float()
        self.alpha_bars = alpha_bars.float()
        self._ab64 = alpha_bars

    def __len__(self) -> int:
        return self.num_steps

    def _ab(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at levels ``t`` (N,), ``-1`` meaning clean (1.0), shaped (N, 1, ...) to broadcast over ``like``."""
        ab = torch.cat([self._ab64.new_ones(1), self._ab64])[t.long().cpu() + 1]
        return ab.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; ``t=-1`` returns x0."""
        if noise is None:
            noise = _randn_like(x0, generator)
        ab = self._ab(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The x0 that ``q_sample(x0, t, eps)`` maps to ``x_t``."""
        ab = self._ab(t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The noise that ``q_sample(x0, t, noise)`` needs to give ``x_t``."""
        ab = self._ab(t, x_t)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    def renoise(self, x: torch.Tensor, t_from: int, t_to: int, generator=None) -> torch.Tensor:
        """Forward-noise a sample at level ``t_from`` (-1 = clean) to the noisier level ``t_to`` > ``t_from``."""
        n = x.shape[0]
        ratio = (self._ab(torch.full((n,), t_to), x) / self._ab(torch.full((n,), t_from), x))
        return ratio.sqrt() * x + (1 - ratio).sqrt() * _randn_like(x, generator)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device (so a CPU generator gives the same
    numbers whatever device ``x`` is on) and moved to ``x``'s."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def diffusion_loss(model, x0: torch.Tensor, sched: Schedule, cond=None, prediction: str = "eps",
                   weight: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The denoising loss at a level drawn uniformly per sample: mean over elements of ``weight * (out - target)**2``.

    ``x0`` (N, C, ...); ``target`` is the noise (``prediction="eps"``) or ``x0`` (``"x0"``); ``weight`` broadcasts to
    ``x0`` (PDPP: 10 on the first and last action). Returns a scalar.
    """
    if prediction not in ("eps", "x0"):
        raise ValueError(f"prediction must be 'eps' or 'x0', got {prediction!r}")
    n = x0.shape[0]
    t = torch.randint(0, sched.num_steps, (n,), generator=generator, device="cpu" if generator is None
                      else generator.device).to(x0.device)
    noise = _randn_like(x0, generator)
    out = model(sched.q_sample(x0, t, noise), t, cond)
    err = (out - (noise if prediction == "eps" else x0)) ** 2
    if weight is not None:
        err = err * weight
    return err.mean()


def levels(sched: Schedule, sampler: str = "ddpm", steps: int | None = None) -> list[int]:
    """The descending levels a sampler visits: all T for DDPM (``steps=None``), else ``steps`` evenly spaced levels
    ``0, c, 2c, ...`` with ``c = T // steps`` (PDPP's uniform DDIM grid)."""
    T = sched.num_steps
    if steps is None or steps >= T:
        return list(range(T - 1, -1, -1))
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return list(range(0, T, T // steps))[:steps][::-1]


def jump_schedule(num_levels: int, resample: int = 1, jump_length: int = 1) -> list[int]:
    """RePaint's walk over positions 0..K (K = ``num_levels``; position p holds x at the p-th visited level, K = clean):
    the list of positions visited, starting at 0 and ending at K. A step to p+1 denoises; a step back noises."""
    if resample < 1 or jump_length < 1:
        raise ValueError("resample and jump_length must be >= 1")
    K = num_levels
    jumps = {b: resample - 1 for b in range(1, K - jump_length + 1, jump_length)}  # b = positions above clean
    p, walk = 0, [0]
    while p < K:
        p += 1
        walk.append(p)
        if jumps.get(K - p, 0) > 0:
            jumps[K - p] -= 1
            for _ in range(jump_length):
                p -= 1
                walk.append(p)
    return walk


@torch.no_grad()
def sample(model, shape, sched: Schedule, *, cond=None, prediction: str = "eps", sampler: str = "ddpm",
           steps: int | None = None, eta: float = 0.0, project: Callable | None = None,
           known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None, resample: int = 1,
           jump_length: int = 1, mask_noise: float = 0.0, clip: float | None = None,
           generator: torch.Generator | None = None, progress: str | None = None,
           callback: Callable | None = None, device=None, start: torch.Tensor | None = None) -> torch.Tensor:
    """Draw samples of ``shape`` (N, C, ...) from ``model`` by DDPM (ancestral) or DDIM steps; returns x (the last
    step's output, after the hooks).

    ``sampler="ddpm"`` uses the posterior q(x_prev | x_t, x0_hat) between consecutive visited levels (all T, or
    ``steps`` of them); ``"ddim"`` uses Song et al.'s update with ``eta`` (0 = deterministic). ``clip`` clamps x0_hat
    to [-clip, clip]. ``callback(level, x_t, x0_hat)`` sees every model evaluation (level = the input's level).
    ``progress`` is a description for :class:`companion.runtime.progress`; ``device`` where x lives (default: the
    device of ``known``, else the CPU); noise is drawn on ``generator``'s device. ``start`` replaces the initial
    noise x_T (e.g. a DDIM inversion's last latent). See the module docstring for the hooks.
    """
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    if prediction not in ("eps", "x0"):
        raise ValueError(f"prediction must be 'eps' or 'x0', got {prediction!r}")
    if (known is None) != (known_mask is None):
        raise ValueError("known and known_mask go together")
    if device is None:
        device = start.device if start is not None else known.device if torch.is_tensor(known) else "cpu"
    grid = levels(sched, sampler, steps) + [-1]           # position p -> level; the last position is clean
    walk = jump_schedule(len(grid) - 1, resample, jump_length) if known is not None else list(range(len(grid)))
    unknown = None if known_mask is None else ~known_mask.to(device).bool()

    def hooks(x, p):
        level = grid[p]
        if mask_noise > 0 and level >= 0:
            extra = mask_noise * _randn_like(x, generator)
            x = x + (extra if unknown is None else extra * unknown)
        if known is not None:
            if callable(known):
                k = known(level).to(x)
            else:
                k = known.to(x) if level < 0 else sched.q_sample(known.to(x), torch.full((x.shape[0],), level),
                                                                  generator=generator)
            x = torch.where(unknown, x, k)
        if project is not None:
            x = project(x, cond)
        return x

    x = _randn_like(torch.empty(tuple(shape), device=device), generator) if start is None else start.to(device)
    x = hooks(x, 0)
    moves = list(zip(walk[:-1], walk[1:]))
    for p, q in runtime.progress(iterable=moves, desc=progress or "", enabled=progress is not None, unit="moves"):
        if q < p:                                          # RePaint: back up one step by forward noising
            x = sched.renoise(x, grid[q + 1], grid[q], generator)
            continue
        t_now, t_next = grid[p], grid[q]
        t = torch.full((x.shape[0],), t_now, device=x.device, dtype=torch.long)
        out = model(x, t, cond)
        if prediction == "eps":
            x0_hat = sched.predict_x0(x, t, out)
            if clip is not None:
                x0_hat = x0_hat.clamp(-clip, clip)
            eps_hat = out if clip is None else sched.predict_eps(x, t, x0_hat)
        else:
            x0_hat = out if clip is None else out.clamp(-clip, clip)
            eps_hat = sched.predict_eps(x, t, x0_hat)
        if callback is not None:
            callback(t_now, x, x0_hat)
        ab = sched._ab(t, x)
        ab_next = sched._ab(torch.full_like(t, t_next), x)
        if sampler == "ddim":
            sigma = eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)).clamp(min=0).sqrt()
            x = ab_next.sqrt() * x0_hat + (1 - ab_next - sigma ** 2).clamp(min=0).sqrt() * eps_hat
            if eta > 0 and t_next >= 0:
                x = x + sigma * _randn_like(x, generator)
        else:
            alpha = ab / ab_next                            # one posterior step between visited levels
            beta = 1 - alpha
            mean = (ab_next.sqrt() * beta * x0_hat + alpha.sqrt() * (1 - ab_next) * x) / (1 - ab)
            x = mean
            if t_next >= 0:
                var = beta * (1 - ab_next) / (1 - ab)
                x = x + var.sqrt() * _randn_like(x, generator)
        x = hooks(x, q)
    return x


@torch.no_grad()
def ddim_invert(model, x0: torch.Tensor, sched: Schedule, steps: int | None = None, cond=None,
                progress: str | None = None) -> list[torch.Tensor]:
    """DDIM inversion (η = 0): the deterministic DDIM update run backwards, clean → noisiest, on the grid that
    ``sample(..., sampler="ddim", steps=steps)`` descends. Returns the latents at every visited level, ``x0``
    (clean) first and x_T last; ``sample(start=out[-1], sampler="ddim", steps=steps)`` maps x_T back to about
    ``x0`` (exactly only in the limit of small steps: each step uses the noise predicted where it starts).
    ``out[i]`` sits at level ``levels(sched, "ddim", steps)[::-1][i - 1]`` for i ≥ 1."""
    grid = levels(sched, "ddim", steps)[::-1]  # ascending: the levels sample() visits, noisiest last
    x, out = x0, [x0]
    for t_from, t_to in runtime.progress(iterable=list(zip([-1] + grid[:-1], grid)), desc=progress or "",
                                         enabled=progress is not None, unit="steps"):
        t = torch.full((x.shape[0],), max(t_from, 0), device=x.device, dtype=torch.long)
        eps = model(x, t, cond)
        ab_from = sched._ab(torch.full_like(t, t_from), x)
        ab_to = sched._ab(torch.full_like(t, t_to), x)
        x0_hat = (x - (1 - ab_from).sqrt() * eps) / ab_from.sqrt()
        x = ab_to.sqrt() * x0_hat + (1 - ab_to).sqrt() * eps
        out.append(x)
    return out


def _cat(a, b):
    """Two conditions concatenated along the batch: tensors, dicts of them (None values kept), or None."""
    if a is None:
        return None
    if isinstance(a, dict):
        return {k: _cat(a[k], b[k]) for k in a}
    return torch.cat([a, b])


def classifier_free(model, scale: float, null: Callable):
    """Classifier-free guidance: ``fn(x, t, cond) = u + scale · (c − u)`` with c = ``model(x, t, cond)`` and
    u = ``model(x, t, null(cond))``, both in one batched pass (``scale=1`` is the conditional model)."""
    def guided(x, t, cond):
        c, u = model(torch.cat([x, x]), torch.cat([t, t]), _cat(cond, null(cond))).chunk(2)
        return u + scale * (c - u)

    return guided
