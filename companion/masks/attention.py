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


