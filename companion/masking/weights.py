"""Hard binary masks on a module's **weights**, per sample or shared, trained through a straight-through
Gumbel-sigmoid.

Conventions: a mask multiplies the weight element-wise, **1 = keep**. For a module with weight W of shape S a mask
is either *shared*, shaped like S (broadcastable to it), or *per sample*, shaped (N, *S) (broadcastable to it), where
sample n of the batch is computed with ``W * mask[n]``. Biases are never masked.

- :func:`gumbel_sigmoid` turns logits into masks: ``sigmoid((logits + noise) / tau)`` (the soft mask) and, with
  ``hard=True``, its threshold at 0.5 in the forward pass with the soft mask's gradient in the backward pass
  (straight-through). ``noise="gumbel"`` adds one Gumbel(0, 1) draw G per entry, as MaskUNet's code does: an entry
  with logit l is kept with probability P(l + G > 0) = 1 − exp(−eˡ) (0.632 at l = 0; at l = 5, 1 − e⁻¹⁴⁸, so
  masks whose logits start at 5 start all-ones); ``"logistic"`` adds logistic noise (the difference of two
  Gumbels, the binary Concrete of Maddison et al. 2017: kept with probability sigmoid(l), 0.993 at l = 5);
  ``None`` is the deterministic mask ``logits > 0`` (evaluation).
- :func:`masked_forward` runs an ``nn.Linear`` or ``nn.Conv2d`` with a masked weight. Per-sample masks on a conv
  are **one grouped convolution**: the batch is folded into the channels, (1, N·C_in, H, W), and the N masked
  weights are stacked into (N·C_out, C_in/groups, k, k) with ``groups = N·groups`` — the same arithmetic as N
  separate convolutions, in one call. (``torch.func.vmap`` over ``functional_call`` would express the same thing,
  but vmap's rule for a batched conv weight lowers to exactly this grouped convolution; writing it out keeps the
  computation visible, needs no functional-call machinery and is counted correctly by the FLOPs counter.)
  Per-sample masks on a linear layer are one batched ``einsum``.
- :func:`weight_masks` is a context manager under which named modules use masked weights in their ordinary
  forward, so a whole model runs with masks on some of its layers. Masks are looked up **when the module runs**, so
  the mapping may be filled during the forward pass (e.g. by a hook that computes them from activations).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

NOISES = ("gumbel", "logistic", None)


def _uniform(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1), drawn on the generator's device (CPU numbers whatever ``like``'s device)."""
    device = "cpu" if generator is None else generator.device
    u = torch.rand(shape, generator=generator, device=device, dtype=like.dtype)
    tiny = torch.finfo(like.dtype).tiny
    return u.clamp(tiny, 1 - torch.finfo(like.dtype).eps).to(like.device)


def gumbel_sigmoid(logits: torch.Tensor, tau: float = 1.0, hard: bool = True, noise: str | None = "gumbel",
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Masks from ``logits`` (any shape): soft ``sigmoid((logits + noise) / tau)`` in [0, 1], or with ``hard=True``
    {0, 1} values that pass the soft mask's gradient (straight-through). See the module doc for ``noise``."""
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    z = logits
    if noise == "gumbel":
        z = logits - torch.log(-torch.log(_uniform(logits.shape, generator, logits)))
    elif noise == "logistic":
        u = _uniform(logits.shape, generator, logits)
        z = logits + torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid(z / tau)
    if not hard:
        return soft
    return (z > 0).to(soft.dtype) - soft.detach() + soft


def _check(module: nn.Module, mask: torch.Tensor) -> bool:
    """True for a per-sample mask (N, *W.shape), False for a shared one; raises for anything else."""
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"weight masks support nn.Linear and nn.Conv2d, not {type(module).__name__}")
    w = module.weight
    per_sample = mask.dim() == w.dim() + 1
    try:
        torch.broadcast_shapes(mask.shape[per_sample:], w.shape)
    except RuntimeError:
        raise ValueError(f"mask {tuple(mask.shape)} does not fit weight {tuple(w.shape)} (shared) or "
                         f"(N, *{tuple(w.shape)}) (per sample)") from None
    return per_sample


def masked_forward(module: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``module(x)`` computed with its weight multiplied by ``mask`` (shared, or per sample: see the module doc).

    Linear: x (N, ..., in) → (N, ..., out). Conv2d: x (N, C_in, H, W) → (N, C_out, H', W') (zero padding only).
    """
    per_sample = _check(module, mask)
    w, b = module.weight, module.bias
    if not per_sample:
        return module._conv_forward(x, w * mask, b) if isinstance(module, nn.Conv2d) else F.linear(x, w * mask, b)
    n = x.shape[0]
    if mask.shape[0] != n:
        raise ValueError(f"per-sample mask for {mask.shape[0]} samples, batch of {n}")
    weights = w * mask  # (N, *W.shape)
    if isinstance(module, nn.Linear):
        out = torch.einsum("n...i,noi->n...o", x, weights)
        return out if b is None else out + b
    if module.padding_mode != "zeros":
        raise ValueError("per-sample conv masks support padding_mode='zeros' only")
    out = F.conv2d(x.reshape(1, n * x.shape[1], *x.shape[2:]), weights.reshape(-1, *w.shape[1:]),
                   None if b is None else b.repeat(n), module.stride, module.padding, module.dilation,
                   module.groups * n)
    return out.reshape(n, -1, *out.shape[2:])


@contextmanager
def weight_masks(modules: Mapping[str, nn.Module], masks: Mapping[str, torch.Tensor]):
    """Inside the context, ``modules[name]`` computes with its weight masked by ``masks[name]`` (looked up each time
    the module runs, so ``masks`` may be filled during the forward pass; a missing name raises KeyError). The
    modules' own forward comes back on exit, whatever happens inside."""
    patched = []
    try:
        for name, module in modules.items():
            if "forward" in module.__dict__:
                raise RuntimeError(f"module {name!r} is already masked")
            module.forward = lambda x, name=name, module=module: masked_forward(module, x, masks[name])
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def mask_density(mask: torch.Tensor, per_sample: bool = True) -> torch.Tensor:
    """Share of kept entries: (N,) per sample for a per-sample mask (N, ...), or a scalar."""
    m = mask.detach().float()
    return m.flatten(1).mean(1) if per_sample else m.mean()
