"""MaskLLM: learnable N:M (2:4) masks on a frozen language model, and how to evaluate them.

Learnable masks: ``NMLinear`` draws its mask from a Gumbel-softmax over the C(m, n) candidate patterns of each
group (``gumbel_softmax_nm_mask``), initialised from a prior (``nm_prior_logits``); ``nm_sparsify`` swaps a
model's linear layers for ``NMLinear``. Fixed masks and pattern utilities are in ``companion.masks.nm``.

Pieces a notebook combines with ``companion.train.fit``: per-window held-out NLL and perplexity, a unigram
reference, calibration input Gram matrices (Wanda uses their diagonal, SparseGPT all of it), SparseGPT's
one-shot N:M pruning with its weight update, the three one-shot baselines of a model at once
(:func:`one_shot_masks`), sparse copies of a model with given masks (and weights), :class:`MaskObjective` (the
LM loss under linearly annealed Gumbel temperature and logit scale), and summaries of learned masks (pattern
counts, change against a prior). Masks are **True = keep** (as in ``companion.masks.nm``).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...masks.nm import (_check_nm, _groups, is_nm, magnitude_nm_mask, nm_candidate_patterns, pattern_index,
                         wanda_nm_mask)
from ...train import Objective, predict


def nm_prior_logits(weight: torch.Tensor, n: int = 2, m: int = 4, strength: float = 3.0) -> torch.Tensor:
    """MaskLLM's prior: pattern logits (out, in/m, C) that favour the magnitude pattern by ``strength``."""
    idx = pattern_index(magnitude_nm_mask(weight, n, m), n, m)
    return strength * F.one_hot(idx, math.comb(m, n)).float()


def gumbel_softmax_nm_mask(logits: torch.Tensor, tau: float = 1.0, hard: bool = False,
                           generator: torch.Generator | None = None, n: int = 2, m: int = 4,
                           scale: float = 1.0) -> torch.Tensor:
    """Differentiable N:M mask from pattern logits (out, in/m, C) → float mask (out, in).

    Per group, pattern probabilities are ``softmax((scale * logits + g) / tau)`` with Gumbel noise g; the mask
    is their probability-weighted sum of candidate patterns. ``hard=True`` uses the argmax pattern in the
    forward pass and the soft gradient in the backward pass (straight-through), so the mask is exactly N:M.
    """
    patterns = nm_candidate_patterns(n, m, dtype=logits.dtype, device=logits.device)  # (C, m)
    if logits.shape[-1] != len(patterns):
        raise ValueError(f"logits last dim must be C({m},{n})={len(patterns)}, got {logits.shape[-1]}")
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    exponential = -torch.log(u.clamp_min(1e-10))  # Exp(1) samples
    gumbel = -torch.log(exponential.clamp_min(1e-10))
    z = (scale * logits + gumbel) / tau
    # softmax is shift-invariant; the floor at exp(-30) ~ 1e-13 keeps low-tau probabilities out of subnormal
    # floats, which make CPU arithmetic about 10x slower and change the mask by less than 1e-12
    z = (z - z.amax(-1, keepdim=True).detach()).clamp_min(-30.0)
    probs = z.softmax(-1)  # (out, in/m, C)
    if hard:
        one_hot = F.one_hot(probs.argmax(-1), len(patterns)).to(probs.dtype)
        probs = one_hot - probs.detach() + probs
    mask = probs @ patterns  # (out, in/m, m)
    return mask.reshape(*logits.shape[:-2], logits.shape[-2] * m)


class NMLinear(nn.Module):
    """A Linear layer with frozen weights and an N:M mask: either fixed (a bool buffer) or learnable
    (MaskLLM: pattern logits sampled with Gumbel-softmax while training; the argmax pattern in eval mode).

    ``tau``, ``scale`` and ``hard`` are plain attributes so a notebook can anneal them during training.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, n: int = 2, m: int = 4,
                 mask: torch.Tensor | None = None, learnable: bool = False, prior_strength: float = 3.0,
                 tau: float = 4.0, scale: float = 1.0, hard: bool = False):
        super().__init__()
        _check_nm(n, m)
        self.n, self.m, self.tau, self.scale, self.hard = n, m, tau, scale, hard
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self.generator: torch.Generator | None = None  # set for reproducible Gumbel noise
        if learnable:
            logits = nm_prior_logits(self.weight, n, m, prior_strength)
            self.mask_logits = nn.Parameter(logits)
            self.register_buffer("fixed_mask", None)
        else:
            mask = magnitude_nm_mask(self.weight, n, m) if mask is None else mask.bool()
            if not is_nm(mask, n, m):
                raise ValueError(f"mask is not a valid {n}:{m} mask for weight {tuple(weight.shape)}")
            self.mask_logits = None
            self.register_buffer("fixed_mask", mask)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> NMLinear:
        return cls(linear.weight, linear.bias, **kwargs)

    @property
    def learnable(self) -> bool:
        return self.mask_logits is not None

    def current_mask(self) -> torch.Tensor:
        """The mask used by forward: (out, in) float; Gumbel-sampled while training a learnable mask."""
        if not self.learnable:
            return self.fixed_mask.to(self.weight.dtype)
        if self.training:
            return gumbel_softmax_nm_mask(self.mask_logits, self.tau, self.hard, self.generator,
                                          self.n, self.m, self.scale)
        return self.final_mask().to(self.weight.dtype)

    def final_mask(self) -> torch.Tensor:
        """The deterministic bool mask (out, in): the fixed mask, or the argmax pattern of every group."""
        if not self.learnable:
            return self.fixed_mask
        patterns = nm_candidate_patterns(self.n, self.m, device=self.mask_logits.device)
        return patterns[self.mask_logits.argmax(-1)].reshape(self.out_features, self.in_features).bool()

    def forward(self, x):
        return F.linear(x, self.weight * self.current_mask(), self.bias)

    def extra_repr(self) -> str:
        kind = "learnable" if self.learnable else "fixed"
        return f"{self.in_features}, {self.out_features}, {self.n}:{self.m} {kind}"


def nm_sparsify(module: nn.Module, n: int = 2, m: int = 4, learnable: bool = False, include=None,
                **kwargs) -> list[str]:
    """Replace (in place) every ``nn.Linear`` whose qualified name passes ``include(name)`` (default: all)
    by an ``NMLinear``. Returns the replaced names. Weight-tied heads should be excluded by ``include``."""
    replaced = []
    for name, child in list(module.named_modules()):
        for attr, sub in list(child.named_children()):
            full = f"{name}.{attr}" if name else attr
            if isinstance(sub, nn.Linear) and (include is None or include(full)):
                setattr(child, attr, NMLinear.from_linear(sub, n=n, m=m, learnable=learnable, **kwargs))
                replaced.append(full)
    return replaced


def nm_prior_logits_from_mask(mask: torch.Tensor, n: int = 2, m: int = 4, strength: float = 3.0) -> torch.Tensor:
    """MaskLLM's prior from any one-shot N:M mask (out, in): pattern logits (out, in/m, C) equal to
    ``strength * (overlap - (n - 1))``, where overlap counts the kept positions a candidate shares with the
    prior's group. For 2:4 the prior pattern gets +strength, patterns sharing one weight 0, the disjoint one
    -strength, so the learner starts at the prior but near patterns stay cheap to reach."""
    if not is_nm(mask, n, m):
        raise ValueError(f"prior mask is not a valid {n}:{m} mask")
    patterns = nm_candidate_patterns(n, m, device=mask.device)  # (C, m)
    overlap = _groups(mask.float(), m) @ patterns.T  # (out, in/m, C)
    return strength * (overlap - (n - 1))


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
def input_grams(model: nn.Module, x: torch.Tensor, names: list[str], batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Gram matrix ``X^T X`` of the inputs of each named ``nn.Linear`` over all calibration tokens:
    {name: (in_features, in_features)} float64. ``x`` (n, T) are calibration token windows fed through ``model``.
    Its diagonal is the squared input-feature norm that Wanda uses; SparseGPT uses the whole matrix."""
    modules = dict(model.named_modules())
    grams = {name: torch.zeros(modules[name].in_features, modules[name].in_features, dtype=torch.float64)
             for name in names}

    def accumulate(name):
        def hook(module, inputs, output):  # returns None: the output is left unchanged
            a = inputs[0].detach().double().flatten(0, -2).cpu()
            grams[name].add_(a.T @ a)
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
    return grams


@torch.no_grad()
def sparsegpt_nm(weight: torch.Tensor, gram: torch.Tensor, n: int = 2, m: int = 4,
                 damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's one-shot N:M pruning (Frantar & Alistarh 2023, the official ``fasterprune`` without blocking).

    Columns (input features) are visited left to right; at the start of each group of ``m`` the ``m - n``
    weights of every row with the smallest ``w^2 / [H^-1]_jj^2`` are pruned, and each column's pruning error is
    spread over the not yet visited columns through the inverse Hessian ``H = X^T X + damp * mean(diag) * I``
    (an optimal-brain-surgeon update), so the kept weights compensate for the pruned ones.
    ``weight`` (out, in), ``gram`` (in, in) from :func:`input_grams`. Returns the updated weight (out, in), zero
    where pruned, and its bool mask (True = keep), a valid N:M mask.
    """
    _check_nm(n, m)
    W = weight.detach().double().clone()
    H = gram.detach().double().clone().to(W.device)
    dead = H.diag() == 0  # features never active in calibration: prune freely
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * H.diag().mean() * torch.eye(len(H), dtype=H.dtype, device=H.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    keep = torch.ones_like(W, dtype=torch.bool)
    for i in range(W.shape[1]):
        if i % m == 0:
            score = W[:, i:i + m] ** 2 / hinv.diag()[i:i + m] ** 2
            drop = score.topk(m - n, dim=1, largest=False).indices + i
            keep.scatter_(1, drop, False)
        err = W[:, i] * ~keep[:, i] / hinv[i, i]
        W[:, i:] -= err[:, None] * hinv[i, i:][None, :]  # column i becomes its kept value (or 0)
    return (W * keep).to(weight.dtype), keep


def linear_names(model: nn.Module, include=None) -> list[str]:
    """Qualified names of the ``nn.Linear`` modules passing ``include(name)`` (default: all)."""
    return [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear) and (include is None or include(n))]


def one_shot_masks(model: nn.Module, calib: torch.Tensor, layers: list[str], n: int = 2, m: int = 4,
                   batch_size: int = 128) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]]:
    """The three one-shot N:M baselines of the named linears of ``model``, calibrated on token windows ``calib``
    (k, T): ``{"magnitude", "Wanda", "SparseGPT"}`` → ``(masks, weights)``, where ``masks`` {name: bool (out, in)}
    and ``weights`` {name: (out, in)} are SparseGPT's updated weights (``None`` for the two that keep the dense
    weights). Wanda scores |W_ij| by the norm of input feature j over the calibration tokens (the square root of
    the Gram diagonal); every layer is calibrated on the dense model's activations."""
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight.detach() for name in layers}
    device = next(model.parameters()).device
    grams = input_grams(model, calib.to(device), layers, batch_size=batch_size)
    sparsegpt = {name: sparsegpt_nm(w, grams[name], n, m) for name, w in weights.items()}  # (weight, mask)
    return {"magnitude": ({name: magnitude_nm_mask(w, n, m) for name, w in weights.items()}, None),
            "Wanda": ({name: wanda_nm_mask(w, grams[name].diag().sqrt().float(), n, m)
                       for name, w in weights.items()}, None),
            "SparseGPT": ({name: keep for name, (_, keep) in sparsegpt.items()},
                          {name: w for name, (w, _) in sparsegpt.items()})}


def sparse_copy(model: nn.Module, masks: dict[str, torch.Tensor] | None = None, prior_logits=None,
                n: int = 2, m: int = 4, generator: torch.Generator | None = None,
                weights: dict[str, torch.Tensor] | None = None, **kwargs) -> nn.Module:
    """A deep copy of ``model`` whose named linears become frozen ``NMLinear``: with the fixed bool masks
    ``masks`` {name: (out, in)}, or learnable (MaskLLM) with the initial pattern logits ``prior_logits``
    {name: (out, in/m, C)}. Exactly one of the two dicts is given; its keys are the layers replaced. Every
    other parameter of the copy is frozen too, so only mask logits can train. ``generator`` (shared by the
    learnable layers) makes their Gumbel noise reproducible. ``weights`` {name: (out, in)} replaces the
    weights of named layers (SparseGPT's updated weights); by default each layer keeps its own."""
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
        weight = lin.weight if weights is None or name not in weights else weights[name]
        if masks is not None:
            new = NMLinear(weight, lin.bias, n=n, m=m, mask=init, **kwargs)
        else:
            new = NMLinear(weight, lin.bias, n=n, m=m, learnable=True, **kwargs)
            new.generator = generator
            with torch.no_grad():
                new.mask_logits.copy_(init)
        setattr(modules[parent] if parent else sparse, attr, new)
    return sparse


class MaskObjective(Objective):
    """MaskLLM's training objective for ``companion.train.fit``: ``loss(model, x, y)`` through Gumbel-sampled
    masks, with the temperature tau annealed linearly from ``tau[0]`` (first step) to ``tau[1]`` (last step)
    and the logit scale likewise from ``scale[0]`` to ``scale[1]``. Before each loss it sets both on every
    learnable ``NMLinear`` of the model; it returns ``{"loss", "tau", "scale"}``, so ``fit``'s history logs the
    schedule per step (``history.metrics["tau"]``)."""

    def __init__(self, loss, tau: tuple[float, float] = (4.0, 0.1), scale: tuple[float, float] = (1.0, 1.0)):
        self.loss, self.tau, self.scale = loss, tau, scale

    def value(self, step: int, total: int) -> tuple[float, float]:
        """(tau, scale) at ``step`` of ``total`` steps (0-based; the last step reaches the end values)."""
        t = min(step, total - 1) / max(1, total - 1)
        return (self.tau[0] + (self.tau[1] - self.tau[0]) * t, self.scale[0] + (self.scale[1] - self.scale[0]) * t)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None):
        tau, scale = self.value(self.step, self.total)
        for mod in model.modules():
            if isinstance(mod, NMLinear) and mod.learnable:
                mod.tau, mod.scale = tau, scale
        return {"loss": self.loss(model, x, y), "tau": tau, "scale": scale}


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
