"""Evaluating and learning N:M sparse language models with frozen weights (MaskLLM-style experiments).

Pieces a notebook combines with ``companion.train.fit``: per-window held-out NLL and perplexity, a unigram
reference, calibration input norms for Wanda, sparse copies of a model with given masks, the linear
temperature/scale annealing of the Gumbel-softmax, and summaries of learned masks (pattern counts, change
against a prior). Masks are **True = keep** (as in ``companion.nm_sparsity``).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nm_sparsity import NMLinear, nm_candidate_patterns, pattern_index
from .train import predict


def window_nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Mean next-token NLL (nats) of each window: x, y (n, T) long → (n,) float. The model is put in eval mode."""
    model.eval()
    return predict(lambda a, b: F.cross_entropy(model(a).transpose(1, 2), b, reduction="none").mean(1),
                   x, y, batch_size=batch_size, device=device)


def perplexity(nll: torch.Tensor) -> float:
    """exp of the mean per-token NLL (nats); ``nll`` per window of equal length."""
    return math.exp(float(nll.float().mean()))


def unigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> float:
    """Perplexity on ``eval_ids`` of the add-one-smoothed character frequencies of ``train_ids``: what a
    model that ignores context reaches."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(float(-logp[eval_ids].mean()))


@torch.no_grad()
def input_norms(model: nn.Module, x: torch.Tensor, names: list[str], batch_size: int = 128) -> dict[str, torch.Tensor]:
    """L2 norm over all calibration tokens of each input feature of the named ``nn.Linear`` modules:
    {name: (in_features,)}. ``x`` (n, T) are calibration token windows fed through ``model``."""
    modules = dict(model.named_modules())
    sq = {name: torch.zeros(modules[name].in_features) for name in names}
    def accumulate(name):
        def hook(module, inputs, output):  # returns None: the output is left unchanged
            sq[name].add_(inputs[0].detach().float().pow(2).flatten(0, -2).sum(0).cpu())
        return hook

    hooks = [modules[name].register_forward_hook(accumulate(name)) for name in names]
    model.eval()
    try:
        device = next(model.parameters()).device
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
    return {name: s.sqrt() for name, s in sq.items()}


def linear_names(model: nn.Module, include=None) -> list[str]:
    """Qualified names of the ``nn.Linear`` modules passing ``include(name)`` (default: all)."""
    return [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear) and (include is None or include(n))]


def sparse_copy(model: nn.Module, masks: dict[str, torch.Tensor] | None = None, prior_logits=None,
                n: int = 2, m: int = 4, generator: torch.Generator | None = None, **kwargs) -> nn.Module:
    """A deep copy of ``model`` whose named linears become frozen ``NMLinear``: with the fixed bool masks
    ``masks`` {name: (out, in)}, or learnable (MaskLLM) with the initial pattern logits ``prior_logits``
    {name: (out, in/m, C)}. Exactly one of the two dicts is given; its keys are the layers replaced. Every
    other parameter of the copy is frozen too, so only mask logits can train. ``generator`` (shared by the
    learnable layers) makes their Gumbel noise reproducible."""
    if (masks is None) == (prior_logits is None):
        raise ValueError("give exactly one of masks= (fixed) or prior_logits= (learnable)")
    sparse = copy.deepcopy(model)
    for p in sparse.parameters():
        p.requires_grad_(False)
    modules = dict(sparse.named_modules())
    for name, init in (masks or prior_logits).items():
        lin = modules[name]
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"{name!r} is not an nn.Linear (got {type(lin).__name__})")
        parent, _, attr = name.rpartition(".")
        if masks is not None:
            new = NMLinear.from_linear(lin, n=n, m=m, mask=init, **kwargs)
        else:
            new = NMLinear.from_linear(lin, n=n, m=m, learnable=True, **kwargs)
            new.generator = generator
            with torch.no_grad():
                new.mask_logits.copy_(init)
        setattr(modules[parent] if parent else sparse, attr, new)
    return sparse


class AnnealSchedule:
    """MaskLLM's linear schedules over mask-learning steps: temperature tau from ``tau[0]`` to ``tau[1]`` and
    logit scale from ``scale[0]`` to ``scale[1]``. Calling it with a model sets both on every learnable
    ``NMLinear`` for the current step and advances one step (call it once per training step, e.g. at the top
    of a ``loss_fn``); ``history`` keeps the (tau, scale) used at each step."""

    def __init__(self, steps: int, tau: tuple[float, float] = (4.0, 0.1), scale: tuple[float, float] = (1.0, 1.0)):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps, self.tau, self.scale = steps, tau, scale
        self.step = 0
        self.history: list[tuple[float, float]] = []

    def value(self, step: int) -> tuple[float, float]:
        t = min(step, self.steps - 1) / max(1, self.steps - 1)
        return (self.tau[0] + (self.tau[1] - self.tau[0]) * t, self.scale[0] + (self.scale[1] - self.scale[0]) * t)

    def __call__(self, model: nn.Module) -> tuple[float, float]:
        tau, scale = self.value(self.step)
        for mod in model.modules():
            if isinstance(mod, NMLinear) and mod.learnable:
                mod.tau, mod.scale = tau, scale
        self.step += 1
        self.history.append((tau, scale))
        return tau, scale


def final_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{name: bool mask (out, in)} of every ``NMLinear`` (a learnable one gives its argmax pattern)."""
    return {n: mod.final_mask().detach().cpu() for n, mod in model.named_modules() if isinstance(mod, NMLinear)}


def pattern_counts(mask: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """How many groups use each candidate pattern: valid N:M mask (out, in) → (C,) long."""
    return torch.bincount(pattern_index(mask, n, m).flatten(), minlength=len(nm_candidate_patterns(n, m)))


def changed_groups(a: torch.Tensor, b: torch.Tensor, m: int = 4) -> float:
    """Share of m-weight groups whose pattern differs between two masks of the same shape (out, in)."""
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a.bool() != b.bool()).reshape(*a.shape[:-1], a.shape[-1] // m, m).any(-1)
    return float(diff.float().mean())


def gate_confidence(model: nn.Module, threshold: float = 0.9) -> float:
    """Share of groups, over all learnable ``NMLinear``, whose noise-free pattern probability
    softmax(scale * logits / tau) has a maximum above ``threshold`` (the gate has converged)."""
    hits = total = 0
    for mod in model.modules():
        if isinstance(mod, NMLinear) and mod.learnable:
            probs = (mod.scale * mod.mask_logits.detach() / mod.tau).softmax(-1)
            hits += int((probs.max(-1).values > threshold).sum())
            total += probs[..., 0].numel()
    return hits / max(1, total)


def overlap_counts(mask: torch.Tensor, prior: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """How many m-weight groups of ``mask`` share k kept positions with ``prior``, k = 0..n: (n+1,) long.
    For 2:4, index 2 = same pattern, 1 = one kept weight swapped, 0 = disjoint pattern."""
    if mask.shape != prior.shape:
        raise ValueError(f"masks differ in shape: {tuple(mask.shape)} vs {tuple(prior.shape)}")
    shared = (mask.bool() & prior.bool()).reshape(*mask.shape[:-1], mask.shape[-1] // m, m).sum(-1)
    return torch.bincount(shared.flatten(), minlength=n + 1)[: n + 1]
