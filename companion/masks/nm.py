"""N:M structured sparsity masks: candidate patterns, magnitude and Wanda masks, pattern indices.

Learnable masks (MaskLLM's Gumbel-softmax over patterns) are in ``companion.methods.parameter_masks.maskllm``.

Convention: a weight (out, in) is split into groups of ``m`` consecutive *input* weights per output row, and
an N:M mask keeps exactly ``n`` of each group. Masks are **True / 1 = keep**.
"""

from __future__ import annotations

import itertools

import torch


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


def wanda_nm_mask(weight: torch.Tensor, input_norm: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Wanda-style one-shot N:M mask (Sun et al. 2023): keep the n largest ``|W_ij| * ||X_j||`` in each group of m
    consecutive inputs. ``input_norm`` (in,) is the L2 norm of each input feature over calibration tokens.
    Returns a bool mask like ``weight`` (out, in). With equal input norms it is the magnitude mask."""
    if input_norm.shape != weight.shape[-1:]:
        raise ValueError(f"input_norm must have shape ({weight.shape[-1]},), got {tuple(input_norm.shape)}")
    return magnitude_nm_mask(weight.detach().abs() * input_norm.to(weight.device)[None, :], n, m)


