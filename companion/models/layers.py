"""The building blocks every transformer in ``companion.models`` shares (timm's ``layers``, in miniature).

- ``Attention``: multi-head attention, self (one fused ``qkv`` projection) or cross (``q`` from the queries'
  input, ``kv`` from a context), through ``F.scaled_dot_product_attention`` unless the map itself is wanted;
- ``MLP``: Linear → GELU → Linear (→ dropout);
- ``Block``: the pre-LN block x + attn(norm1(x)), then x + mlp(norm2(x)), of the ViT, MAE, GPT and Seq2Seq encoder;
- ``PatchEmbed``: non-overlapping patches (or tubes of frames) → tokens, by a strided convolution;
- ``KVCache``: per-layer keys and values for incremental decoding.

Mask convention: a bool attention mask is **True = may attend** (SDPA's convention, as in
``companion.masks.attention``); a float mask is an additive bias (0 = attend freely, -inf = never). Masks
broadcast to (N, H, L, K): N sequences, H heads, L queries, K keys. Queries are the *last* L of the K positions
(this matters with a KV cache).

The attention map att (N, H, L, K), after the softmax, can be
- read: ``return_attention=True`` returns it (the models' ``return_attention`` / ``capture`` use this);
- read or replaced: inside ``with attention_map_hook(model, fn):`` every ``Attention`` of ``model`` calls
  ``fn(module, att)``; a returned tensor replaces the map (e.g. to edit cross-attention), None keeps it;
- steered from content: ``qkv_fn(layer_idx, q, k, v)`` returns a bool mask or a float bias (N|1, H|1, L, K),
  or None, that is combined with the mask (the GPT's ``attn_qkv_fn``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..masks.attention import causal_mask


def as_bias(mask: torch.Tensor, dtype=None) -> torch.Tensor:
    """A bool mask (True = may attend) → the same mask as an additive float bias (0 or -inf); a float mask as is."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def merge_masks(mask, extra, is_causal: bool = False):
    """Fold ``extra`` (None, a bool mask or a float bias shaped (..., L, K)) into ``(mask, is_causal)``.

    Returns ``(mask, is_causal)`` unchanged when ``extra`` is None, else ``(bias, False)``: one additive float
    bias holding all three (causality as an explicit mask, queries the last L of K positions). Every query
    must keep at least one allowed key.
    """
    if extra is None:
        return mask, is_causal
    extra = as_bias(extra, mask.dtype if mask is not None and mask.is_floating_point() else None)
    if is_causal:
        q_len, k_len = extra.shape[-2:]
        extra = extra.masked_fill(~causal_mask(q_len, k_len, extra.device), float("-inf"))
    return (extra if mask is None else as_bias(mask, extra.dtype) + extra), False


class KVCache:
    """Per-layer keys/values (N, H, T, hd) and key validity (N, T) for incremental decoding.

    Every layer's cache has the same length ``self.length`` (the caller advances it after a step); a layer
    skipped for a sequence stores nothing valid for it (``valid`` is False there), so later queries of that
    layer never read those slots.
    """

    def __init__(self, n_layer: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.valid: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0
        self.last_token: torch.Tensor | None = None  # (N,) last token seen, for the GPT's token shift

    def append_valid(self, layer_idx: int, written: torch.Tensor) -> torch.Tensor:
        """Record which new slots (N, L) hold real keys for this layer; returns all validity (N, T+L)."""
        old = self.valid[layer_idx]
        self.valid[layer_idx] = written if old is None else torch.cat([old, written], dim=1)
        return self.valid[layer_idx]

    def append_kv(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's k, v (N, H, L, hd) to the layer's cache; returns all keys and values (N, H, T+L, hd)."""
        if self.k[layer_idx] is not None:
            k = torch.cat([self.k[layer_idx], k], dim=2)
            v = torch.cat([self.v[layer_idx], v], dim=2)
        self.k[layer_idx], self.v[layer_idx] = k, v
        return k, v


class Attention(nn.Module):
    """Multi-head attention: softmax(q·kᵀ/√hd + mask)·v, then an output projection (and dropout).

    Self-attention (``cross=False``) projects q, k, v from x with one ``qkv`` linear; cross-attention
    (``cross=True``) projects q from x and k, v from ``context`` with ``q`` and ``kv``. ``layer_idx`` names the
    layer for the KV cache and the ``qkv_fn`` hook.
    """

    def __init__(self, dim: int, heads: int, cross: bool = False, dropout: float = 0.0, layer_idx: int = 0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.cross, self.layer_idx = heads, cross, layer_idx
        if cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.map_fn = None  # ``fn(module, att) -> att | None``, set by ``attention_map_hook``

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(N, L, D) → (N, H, L, hd)."""
        n, length, d = t.shape
        return t.view(n, length, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, context=None, mask=None, is_causal: bool = False, cache: KVCache | None = None,
                qkv_fn=None, return_attention: bool = False):
        """x (N, L, D) → (y (N, L, D), att (N, H, L, K) if ``return_attention`` else None).

        context: (N, S, D), the keys' and values' input of cross-attention (K = S); None for self-attention.
        mask: bool (True = may attend) or additive float, broadcastable to (N, H, L, K), or None.
        is_causal: query i (position K-L+i) attends keys up to its position only.
        cache: a ``KVCache`` (self-attention only): k, v are appended to this layer's cache and all are used.
        qkv_fn: content hook ``(layer_idx, q (N,H,L,hd), k, v (N,H,K,hd)) -> bool | float | None`` combined
        with the mask.
        """
        n, length, d = x.shape
        if self.cross:
            if context is None or cache is not None:
                raise ValueError("cross-attention needs a context (N, S, D) and takes no KV cache")
            q = self.q(x)
            k, v = self.kv(context).split(d, dim=2)
        else:
            if context is not None:
                raise ValueError("a self-attention layer takes no context; build Attention(cross=True)")
            q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (N,H,L,hd), (N,H,K,hd)
        if cache is not None:
            k, v = cache.append_kv(self.layer_idx, k, v)
        k_len = k.shape[2]
        if is_causal and length != k_len:  # SDPA's own causal mask is aligned top-left; ours bottom-right
            mask, is_causal = merge_masks(mask, causal_mask(length, k_len, x.device))
        if qkv_fn is not None:
            mask, is_causal = merge_masks(mask, qkv_fn(self.layer_idx, q, k, v), is_causal)
        att = None
        if return_attention or self.map_fn is not None:
            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (N,H,L,K)
            if is_causal:
                scores = scores.masked_fill(~causal_mask(length, k_len, x.device), float("-inf"))
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            att = scores.softmax(dim=-1)
            if self.map_fn is not None:
                replaced = self.map_fn(self, att)
                att = att if replaced is None else replaced
            y = att @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(n, length, d)
        return self.drop(self.proj(y)), (att if return_attention else None)


@contextmanager
def attention_map_hook(model: nn.Module, fn):
    """Inside the context, every ``Attention`` in ``model`` calls ``fn(module, att)`` on its attention map
    att (N, H, L, K) after the softmax and uses the tensor ``fn`` returns instead (None keeps the map). The
    maps are then computed explicitly (no fused SDPA kernel). ``module.layer_idx`` tells the layers apart."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    previous = [m.map_fn for m in layers]
    for m in layers:
        m.map_fn = fn
    try:
        yield model
    finally:
        for m, old in zip(layers, previous):
            m.map_fn = old


class MLP(nn.Module):
    """Linear (dim → ⌊dim·mlp_ratio⌋) → GELU → Linear (→ dim) → dropout."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, layer_idx: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=dropout, layer_idx=layer_idx)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x, mask=None, is_causal: bool = False, cache: KVCache | None = None,
                return_attention: bool = False, qkv_fn=None):
        """x (N, L, D) → (x (N, L, D), att (N, H, L, K) or None); the arguments are ``Attention``'s."""
        y, att = self.attn(self.norm1(x), mask=mask, is_causal=is_causal, cache=cache, qkv_fn=qkv_fn,
                           return_attention=return_attention)
        x = x + y
        return x + self.mlp(self.norm2(x)), att


class PatchEmbed(nn.Module):
    """Images (N, C, H, W) → tokens (N, L, D), one per non-overlapping ``patch_size``² patch, row-major:
    L = (H/p)·(W/p). With ``tubelet=u``, clips (N, C, T, H, W) → one token per tube of u frames × p² pixels,
    ordered (time, row, column): L = T/u · (H/p)·(W/p)."""

    def __init__(self, patch_size: int, in_channels: int, dim: int, tubelet: int | None = None):
        super().__init__()
        if tubelet is None:
            self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        else:
            size = (tubelet, patch_size, patch_size)
            self.proj = nn.Conv3d(in_channels, dim, size, stride=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


__all__ = ["Attention", "Block", "KVCache", "MLP", "PatchEmbed", "as_bias", "attention_map_hook", "merge_masks"]
