"""N:M structured sparsity: fixed masks (magnitude) and learnable masks (MaskLLM's Gumbel-softmax over patterns).

Convention: a weight (out, in) is split into groups of ``m`` consecutive *input* weights per output row, and
an N:M mask keeps exactly ``n`` of each group. Masks are **True / 1 = keep**.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _check_nm(n: int, m: int):
    if not 0 < n <= m:
        raise ValueError(f"need 0 < n <= m, got n={n}, m={m}")


def _groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """(..., in) → (..., in/m, m); the last dimension must be divisible by m."""
    if t.shape[-1] % m:
        raise ValueError(f"last dimension {t.shape[-1]} is not divisible by m={m}")
    return t.reshape(*t.shape[:-1], t.shape[-1] // m, m)


def nm_candidate_patterns(n: int = 2, m: int = 4, dtype=torch.float32, device=None) -> torch.Tensor:
    """All C(m, n) binary patterns with exactly n ones, (C, m), in lexicographic order of kept positions.
    For 2:4: the 6 patterns 1100, 1010, 1001, 0110, 0101, 0011."""
    _check_nm(n, m)
    rows = [[1 if j in keep else 0 for j in range(m)] for keep in itertools.combinations(range(m), n)]
    return torch.tensor(rows, dtype=dtype, device=device)


def is_nm(mask: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True iff ``mask`` (..., in) is binary and keeps exactly n of every m consecutive entries in the last dim."""
    _check_nm(n, m)
    if mask.shape[-1] % m:
        return False
    mask = mask.float() if mask.dtype == torch.bool else mask
    binary = bool(((mask == 0) | (mask == 1)).all())
    return binary and bool((_groups(mask, m).sum(-1) == n).all())


def magnitude_nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Bool mask like ``weight`` (out, in) keeping the n largest |w| in each group of m consecutive inputs."""
    _check_nm(n, m)
    g = _groups(weight.detach().abs(), m)  # (out, in/m, m)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter(-1, g.topk(n, dim=-1).indices, True)
    return keep.reshape(weight.shape)


def pattern_index(mask: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Valid N:M mask (out, in) → index of its candidate pattern per group, (out, in/m) long."""
    patterns = nm_candidate_patterns(n, m, device=mask.device)  # (C, m)
    eq = (_groups(mask.float(), m)[..., None, :] == patterns).all(-1)  # (out, in/m, C)
    if not bool(eq.any(-1).all()):
        raise ValueError(f"mask is not a valid {n}:{m} mask")
    return eq.float().argmax(-1)


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
    probs = ((scale * logits + gumbel) / tau).softmax(-1)  # (out, in/m, C)
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


def wanda_nm_mask(weight: torch.Tensor, input_norm: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Wanda-style one-shot N:M mask (Sun et al. 2023): keep the n largest ``|W_ij| * ||X_j||`` in each group of m
    consecutive inputs. ``input_norm`` (in,) is the L2 norm of each input feature over calibration tokens.
    Returns a bool mask like ``weight`` (out, in). With equal input norms it is the magnitude mask."""
    if input_norm.shape != weight.shape[-1:]:
        raise ValueError(f"input_norm must have shape ({weight.shape[-1]},), got {tuple(input_norm.shape)}")
    return magnitude_nm_mask(weight.detach().abs() * input_norm.to(weight.device)[None, :], n, m)


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
