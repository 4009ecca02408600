"""Attention masks: bool (L, K) or (..., L, K), **True = may attend** (the SDPA convention).

Queries are the *last* ``q_len`` of the ``k_len`` positions (this matters with a KV cache).
"""

from __future__ import annotations

import torch


def causal_mask(q_len: int, k_len: int | None = None, device=None) -> torch.Tensor:
    """(L, K) bool: query i (absolute position K-L+i) may attend keys j <= its position."""
    k_len = q_len if k_len is None else k_len
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= q_pos


def sliding_window_mask(q_len: int, window: int, k_len: int | None = None, device=None) -> torch.Tensor:
    """(L, K) bool causal sliding window: a query at position p sees keys p-window < j <= p (itself included)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    k_len = q_len if k_len is None else k_len
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    return (k_pos <= q_pos) & (k_pos > q_pos - window)


def sliding_window_bias_fn(window: int):
    """An ``attn_bias_fn`` applying the same sliding window in every layer."""
    return lambda layer_idx, q_len, k_len: sliding_window_mask(q_len, window, k_len)


def topk_mask(scores: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``k`` highest-scoring keys per query. scores (..., L, K) float; ``allowed`` bool broadcastable
    to it (e.g. ``causal_mask``) restricts the candidates; a query with fewer than ``k`` allowed keys keeps all.
    Returns a bool mask shaped like ``scores`` (True = keep). Not differentiable (use it on detached scores)."""
    if allowed is not None:
        allowed = allowed.expand_as(scores)
        scores = scores.masked_fill(~allowed, float("-inf"))
    k = min(k, scores.shape[-1])
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, scores.topk(k, dim=-1).indices, True)
    return keep & allowed if allowed is not None else keep



# --- input-agnostic sparse patterns ------------------------------------------------------------------------------
# Each is the causal top-``window`` of a fixed, input-independent priority over the keys, so every query keeps
# exactly min(window, its position + 1) keys: the same count as a sliding window or a causal top-w selection
# (DMA), which makes them comparisons at equal attended keys per query.


def _distance(q_len: int, k_len: int | None, device=None) -> torch.Tensor:
    """(L, K) long: query position minus key position (negative for future keys)."""
    k_len = q_len if k_len is None else k_len
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return q_pos - torch.arange(k_len, device=device)[None, :]


def pattern_mask(priority: torch.Tensor, window: int) -> torch.Tensor:
    """Causal top-``window`` of a fixed priority (..., L, K) float (higher = kept first) → bool mask like it."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    q_len, k_len = priority.shape[-2:]
    return topk_mask(priority, window, allowed=causal_mask(q_len, k_len, priority.device))


def strided_mask(q_len: int, window: int, stride: int, local: int = 0, offset: int = 0,
                 k_len: int | None = None, device=None) -> torch.Tensor:
    """(L, K) bool strided + local pattern (the fixed patterns of Sparse Transformers, Child et al. 2019): a query
    keeps its ``local`` most recent keys, then the most recent keys at distances ``offset, offset + stride,
    offset + 2*stride, ...`` beyond them, then (if the strided keys run out) the next most recent keys; exactly
    min(window, position + 1) keys in all. Give heads different ``offset`` s to cover different keys."""
    if stride < 1 or not 0 <= offset < stride or not 0 <= local <= window:
        raise ValueError(f"need stride >= 1, 0 <= offset < stride, 0 <= local <= window; got {stride}, {offset}, "
                         f"{local}")
    dist = _distance(q_len, k_len, device).float()
    on_stride = (dist - local).remainder(stride) == offset
    tier = torch.where(dist < local, 2.0, torch.where(on_stride, 1.0, 0.0))
    return pattern_mask(tier * 1e6 - dist, window)  # by tier, then by recency


def global_local_mask(q_len: int, window: int, n_global: int, k_len: int | None = None, device=None) -> torch.Tensor:
    """(L, K) bool global-token pattern (Longformer / BigBird / attention sinks): a query keeps the first
    ``n_global`` positions, then its most recent keys; exactly min(window, position + 1) keys."""
    if not 0 <= n_global <= window:
        raise ValueError(f"need 0 <= n_global <= window, got {n_global}, {window}")
    dist = _distance(q_len, k_len, device).float()
    k_pos = torch.arange(dist.shape[-1], device=device)[None, :]
    return pattern_mask(torch.where(k_pos < n_global, 1e6, 0.0) - dist, window)


def random_mask(q_len: int, window: int, k_len: int | None = None, n_head: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(L, K) — or (n_head, L, K) with a different draw per head — bool random pattern (BigBird's random keys,
    fixed once drawn): each query keeps min(window, position + 1) of its causal keys drawn uniformly."""
    k_len = q_len if k_len is None else k_len
    shape = (q_len, k_len) if n_head is None else (n_head, q_len, k_len)
    return pattern_mask(torch.rand(shape, generator=generator), window)


def fixed_mask_bias_fn(mask: torch.Tensor):
    """An ``attn_bias_fn`` applying one fixed bool mask (..., T, T) over absolute positions in every layer (with
    a KV cache: the rows of the current queries, the columns of the cached and current keys)."""
    def hook(layer_idx: int, q_len: int, k_len: int) -> torch.Tensor:
        return mask[..., k_len - q_len:k_len, :k_len]
    return hook
