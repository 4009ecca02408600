"""Dynamic Mask Attention (DMA, Shi et al. 2025): trainable, value-derived top-w sparse attention.

In every attention layer each head scores every key from the layer's value vectors,
``dt = dt_proj(v)`` (one number per key and head, computed from all heads' values of that position), and turns
the score into an additive bias ``A * softplus(dt)`` with a learned per-head ``A``. The bias is added to the
q·k logits (so ``dt_proj`` and ``A`` get gradients through the attention weights), and each query keeps only
the ``window`` keys of highest bias among the keys it may see causally; the selection itself uses the
detached bias and is not differentiable. The scores are query-agnostic: one ranking of keys per head,
cut causally per query.

Mask convention (as in ``companion.models.gpt``): bool masks are **True = may attend / kept**.
:class:`DynamicMask` plugs into ``GPT(config, attn_qkv_fn=DynamicMask(...))``; its parameters join the model's.
The CPU implementation masks a dense score matrix: the sparsity saves no time here, it is counted instead
(:func:`attended_key_fraction`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...masks.attention import causal_mask, sliding_window_mask, topk_mask


class DynamicMask(nn.Module):
    """The DMA content hook: per-layer value-derived key bias plus causal top-``window`` selection.

    ``form="linear"`` gives ``A * softplus(dt)`` (the official code's stable form), ``"exp"`` the paper's
    ``exp(A * softplus(dt))``. ``A`` (n_layer, n_head) starts at ``a_init + a_std * N(0, 1)``; the defaults
    are the official code's (flash-dmattn's Doge model: zeros, re-initialised N(0, 0.02)).
    ``last_keep[layer]`` holds the (N,H,L,K) bool selection of the latest forward
    and ``last_bias[layer]`` the (N,H,K) key bias, both detached (for heatmaps and FLOP counts).
    """

    def __init__(self, n_layer: int, n_embd: int, n_head: int, window: int, a_init: float = 0.0,
                 a_std: float = 0.02, form: str = "linear"):
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if form not in ("linear", "exp"):
            raise ValueError(f"form must be 'linear' or 'exp', got {form!r}")
        self.window, self.form, self.n_head = window, form, n_head
        self.dt_proj = nn.ModuleList(nn.Linear(n_embd, n_head) for _ in range(n_layer))
        self.A = nn.Parameter(a_init + a_std * torch.randn(n_layer, n_head))
        self.last_keep: dict[int, torch.Tensor] = {}
        self.last_bias: dict[int, torch.Tensor] = {}

    def key_bias(self, layer_idx: int, v: torch.Tensor) -> torch.Tensor:
        """v (N,H,K,hd) → differentiable key bias (N,H,K)."""
        n, h, k, hd = v.shape
        dt = self.dt_proj[layer_idx](v.transpose(1, 2).reshape(n, k, h * hd))  # (N,K,H)
        bias = self.A[layer_idx] * F.softplus(dt)
        if self.form == "exp":
            bias = torch.exp(bias)
        return bias.transpose(1, 2)  # (N,H,K)

    def forward(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The ``attn_qkv_fn`` hook: q (N,H,L,hd), k/v (N,H,K,hd) → additive mask (N,H,L,K): the key bias on the
        kept keys, -inf elsewhere. Queries are the last L of the K positions (KV cache)."""
        q_len, k_len = q.shape[2], k.shape[2]
        bias = self.key_bias(layer_idx, v)  # (N,H,K)
        scores = bias[:, :, None, :].expand(-1, -1, q_len, -1)  # (N,H,L,K)
        keep = topk_mask(scores.detach(), self.window, allowed=causal_mask(q_len, k_len, q.device))
        self.last_keep[layer_idx], self.last_bias[layer_idx] = keep, bias.detach()
        return scores.masked_fill(~keep, float("-inf"))


def attended_key_fraction(keep: torch.Tensor, causal: bool = True) -> float:
    """Attended (query, key) pairs of a bool mask (..., L, K) as a fraction of dense attention's (causal:
    the lower triangle, queries being the last L of K positions). The score and value FLOPs of attention
    scale with this count."""
    q_len, k_len = keep.shape[-2:]
    dense = causal_mask(q_len, k_len, keep.device) if causal else torch.ones(q_len, k_len, dtype=torch.bool)
    keep = keep & dense
    return keep.sum().item() / (dense.sum().item() * (keep.numel() // (q_len * k_len)))


def window_fraction(seq_len: int, window: int) -> float:
    """Attended-key fraction of a causal top-``window`` or sliding-window mask over ``seq_len`` positions
    (every query keeps min(window, its position + 1) keys)."""
    return attended_key_fraction(sliding_window_mask(seq_len, window))


def mqar_answers(tokens: torch.Tensor, targets: torch.Tensor, ignore: int = -100) -> dict[str, torch.Tensor]:
    """Where each MQAR query's answer lives (tokens/targets from ``companion.data.sequences.mqar``).

    Returns ``query_pos`` (n,Q): positions with a target; ``value_pos`` (n,Q): the context position of the
    value that answers it (the token after the first occurrence of the query key); ``distance`` (n,Q):
    ``query_pos - value_pos`` (a causal sliding window of width w sees the value iff distance < w).
    """
    n = tokens.shape[0]
    has = targets != ignore
    counts = has.sum(1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("every sequence must have the same number of queries")
    query_pos = has.nonzero()[:, 1].view(n, -1)  # (n,Q), ascending
    keys = tokens.gather(1, query_pos)  # (n,Q)
    first = (tokens[:, None, :] == keys[:, :, None]).int().argmax(-1)  # (n,Q) first occurrence
    value_pos = first + 1
    return {"query_pos": query_pos, "value_pos": value_pos, "distance": query_pos - value_pos}


@torch.no_grad()
def query_correct(model, tokens: torch.Tensor, targets: torch.Tensor, batch_size: int = 256,
                  ignore: int = -100) -> torch.Tensor:
    """(n,Q) bool: the model's greedy next-token prediction at each query position is the answer."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(tokens), batch_size):
        x, y = tokens[i:i + batch_size].to(device), targets[i:i + batch_size].to(device)
        pred = model(x).argmax(-1)
        has = y != ignore
        out.append((pred[has] == y[has]).view(len(x), -1).cpu())
    return torch.cat(out)


def answer_selected(keep: torch.Tensor, answers: dict[str, torch.Tensor]) -> torch.Tensor:
    """(n,Q) bool: the answer's value position is among the keys kept for the query by at least one head.
    keep (n,H,L,K) or (L,K) bool (True = kept)."""
    qp, vp = answers["query_pos"], answers["value_pos"]
    if keep.dim() == 2:
        return keep[qp, vp]
    any_head = keep.any(1)  # (n,L,K)
    rows = torch.arange(len(qp))[:, None]
    return any_head[rows, qp, vp]


@torch.no_grad()
def selection_stats(model, tokens: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> dict:
    """Run a GPT whose ``attn_qkv_fn`` is a :class:`DynamicMask` over MQAR data and summarise what it kept:
    ``answer_selected`` (n,Q) bool (the answer's value position is kept for its query by some head of the
    last layer) and ``fraction`` (attended-key fraction of dense causal attention, mean over layers)."""
    hook: DynamicMask = model.attn_qkv_fn
    device = next(model.parameters()).device
    hits, fractions = [], []
    for i in range(0, len(tokens), batch_size):
        x, y = tokens[i:i + batch_size], targets[i:i + batch_size]
        model(x.to(device))
        last = max(hook.last_keep)
        hits.append(answer_selected(hook.last_keep[last].cpu(), mqar_answers(x, y)))
        fractions.append(sum(attended_key_fraction(k) for k in hook.last_keep.values()) / len(hook.last_keep))
    return {"answer_selected": torch.cat(hits), "fraction": sum(fractions) / len(fractions)}
