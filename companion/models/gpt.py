"""A tiny GPT (nanoGPT-style) with the hooks the sequence-masking papers need.

- causal or bidirectional self-attention (``GPTConfig.causal``) through ``F.scaled_dot_product_attention``;
- a pluggable attention mask/bias hook ``attn_bias_fn(layer_idx, q_len, k_len)`` returning an additive float
  bias or a bool mask (True = may attend), shaped (L, K) or (N, H, L, K); the queries are the *last* ``q_len``
  of the ``k_len`` positions (this matters with a KV cache). Ready-made: ``sliding_window_mask``, ``topk_mask``;
- per-layer skip gates: ``forward(idx, skip=...)`` with ``skip`` (n_layer,) or (N, n_layer) bool, True = skip
  (the layer is the identity for that sequence);
- intermediate exit heads: ``return_all_logits=True`` gives the logits after every layer through the shared
  final LayerNorm and head;
- capture of hidden states and attention maps (``capture=True``);
- a ``KVCache`` for incremental decoding; a layer skipped for a sequence neither reads nor writes its cache
  (its cache slots are marked invalid), and ``generate`` decodes greedily with or without the cache;
- a content hook ``attn_qkv_fn(layer_idx, q, k, v)`` called inside each attention layer with that layer's
  q (N,H,L,hd) and k, v (N,H,K,hd) (cache included), returning an additive float bias or a bool mask shaped
  (N|1, H|1, L, K) or None; it is combined with the other masks (e.g. value-derived dynamic masks). If it is an
  ``nn.Module``, its parameters belong to the model.

Mask convention in this module: bool masks are **True = may attend** (the SDPA convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..masks.attention import causal_mask


@dataclass
class GPTConfig:
    vocab_size: int = 64
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    causal: bool = True
    token_shift: bool = False  # add a previous-token embedding (a kernel-2 causal conv on tokens)
    tie_weights: bool = True


# ---------------------------------------------------------------------------------------------------------------
# Mask helpers (bool, True = may attend). Queries are the last q_len of k_len positions.


def merge_attn_mask(extra, attn_mask=None, is_causal: bool = False):
    """Fold a content hook's output into SDPA's ``(attn_mask, is_causal)``: ``extra`` is None, an additive float
    bias or a bool mask (True = may attend), shaped (N|1, H|1, L, K); ``is_causal`` becomes an explicit causal
    mask (queries are the last L of K positions). The hook must leave every query at least one allowed key."""
    if extra is None:
        return attn_mask, is_causal
    if extra.dtype == torch.bool:
        extra = torch.zeros(extra.shape, device=extra.device).masked_fill(~extra, float("-inf"))
    if is_causal:
        q_len, k_len = extra.shape[-2:]
        extra = extra.masked_fill(~causal_mask(q_len, k_len, extra.device), float("-inf"))
    return (extra if attn_mask is None else attn_mask + extra), False


# ---------------------------------------------------------------------------------------------------------------


class KVCache:
    """Per-layer keys/values (N, H, T, hd) and key validity (N, T) for incremental decoding.

    Every layer's cache has the same length ``self.length``; a layer skipped for a sequence stores nothing
    valid for it (``valid`` is False there), so later queries of that layer never read those slots.
    """

    def __init__(self, n_layer: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.valid: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0
        self.last_token: torch.Tensor | None = None  # (N,) last token seen, for token shift

    def append_valid(self, layer_idx: int, written: torch.Tensor) -> torch.Tensor:
        """Record which new slots (N, L) hold real keys for this layer; returns all validity (N, T+L)."""
        old = self.valid[layer_idx]
        self.valid[layer_idx] = written if old is None else torch.cat([old, written], dim=1)
        return self.valid[layer_idx]

    def append_kv(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer_idx] is not None:
            k = torch.cat([self.k[layer_idx], k], dim=2)
            v = torch.cat([self.v[layer_idx], v], dim=2)
        self.k[layer_idx], self.v[layer_idx] = k, v
        return k, v


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; causal or not is decided by the mask the model passes in."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.layer_idx, self.n_head = layer_idx, config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, attn_mask=None, is_causal=False, cache: KVCache | None = None, need_weights=False,
                qkv_fn=None):
        """x (N,L,D); attn_mask additive float (N|1,H|1,L,K) or None; ``qkv_fn(layer_idx, q, k, v)`` an optional
        content hook (see the module docstring). Returns (y (N,L,D), att (N,H,L,K) or None)."""
        n, length, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (t.view(n, length, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))  # (N,H,L,hd)
        if cache is not None:
            k, v = cache.append_kv(self.layer_idx, k, v)  # (N,H,K,hd)
        if qkv_fn is not None:
            attn_mask, is_causal = merge_attn_mask(qkv_fn(self.layer_idx, q, k, v), attn_mask, is_causal)
        att = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (N,H,L,K)
            if is_causal:
                scores = scores.masked_fill(~causal_mask(length, k.shape[2], x.device), float("-inf"))
            if attn_mask is not None:
                scores = scores + attn_mask
            att = scores.softmax(dim=-1)
            y = att @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(n, length, d)
        return self.resid_dropout(self.c_proj(y)), att


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = int(config.mlp_ratio * config.n_embd)
        self.c_fc = nn.Linear(config.n_embd, hidden)
        self.c_proj = nn.Linear(hidden, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, is_causal=False, cache=None, need_weights=False, qkv_fn=None):
        y, att = self.attn(self.ln_1(x), attn_mask, is_causal, cache, need_weights, qkv_fn)
        x = x + y
        return x + self.mlp(self.ln_2(x)), att


class GPT(nn.Module):
    """Token + learned positional embeddings → pre-LN blocks → final LayerNorm → linear head (tied by default)."""

    def __init__(self, config: GPTConfig | None = None, attn_bias_fn=None, attn_qkv_fn=None, **kwargs):
        super().__init__()
        self.config = config = config or GPTConfig(**kwargs)
        self.attn_bias_fn = attn_bias_fn  # default hook; ``forward(attn_bias_fn=...)`` overrides it
        self.attn_qkv_fn = attn_qkv_fn  # default content hook (an nn.Module's parameters join the model)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        # previous-token embedding; row ``vocab_size`` stands for "no previous token"
        self.wse = nn.Embedding(config.vocab_size + 1, config.n_embd) if config.token_shift else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def skip_matrix(self, skip, n: int, device=None) -> torch.Tensor | None:
        """``skip`` (n_layer,) or (N, n_layer) bool-like → (N, n_layer) bool (True = skip), or None."""
        if skip is None:
            return None
        skip = torch.as_tensor(skip, dtype=torch.bool, device=device)
        n_layer = self.config.n_layer
        if skip.shape == (n_layer,):
            skip = skip.expand(n, n_layer)
        if skip.shape != (n, n_layer):
            raise ValueError(f"skip must have shape ({n_layer},) or ({n}, {n_layer}), got {tuple(skip.shape)}")
        return skip

    def _attn_mask(self, layer_idx, q_len, k_len, attn_bias_fn, key_valid, device):
        """Combine causality, cache validity (N,K) and the hook into (additive float mask or None, is_causal)."""
        bias = hook = None
        if attn_bias_fn is not None:
            hook = attn_bias_fn(layer_idx, q_len, k_len)
        if hook is None and key_valid is None:
            return None, self.config.causal and q_len == k_len  # fast path: SDPA's own causal kernel
        allowed = causal_mask(q_len, k_len, device) if self.config.causal else None
        if key_valid is not None:
            kv = key_valid[:, None, None, :]  # (N,1,1,K)
            allowed = kv if allowed is None else allowed & kv
        if hook is not None:
            hook = hook.to(device)
            if hook.dtype == torch.bool:
                allowed = hook if allowed is None else allowed & hook
            else:
                bias = hook
        if allowed is not None:
            # a query with no allowed key (only for sequences whose output is discarded, e.g. a skipped layer)
            # attends everything instead of producing NaN
            allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
            fill = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))
            bias = fill if bias is None else bias + fill
        return bias, False

    def forward(self, idx, skip=None, cache: KVCache | None = None, attn_bias_fn=None,
                return_all_logits: bool = False, capture: bool = False, attn_qkv_fn=None):
        """idx (N,L) token ids → logits (N,L,V).

        skip: (n_layer,) or (N, n_layer) bool, True = that layer is the identity for that sequence.
        cache: a ``KVCache`` continued in place (idx are the next L tokens after ``cache.length``).
        return_all_logits: return a list of n_layer logits, one after every layer (skipped layers repeat).
        attn_qkv_fn: content hook ``(layer_idx, q, k, v) -> bias | bool mask | None``; overrides the model's.
        capture: also return ``{"hidden_states": [n_layer+1 × (N,L,D)], "attentions": [n_layer × (N,H,L,K)]}``
        (attention is None for a layer skipped by the whole batch; rows of skipped sequences are zero).
        """
        n, length = idx.shape
        past = cache.length if cache is not None else 0
        if past + length > self.config.block_size:
            raise ValueError(f"sequence length {past + length} exceeds block_size {self.config.block_size}")
        pos = torch.arange(past, past + length, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (N,L,D)
        if self.wse is not None:
            first = torch.full((n, 1), self.config.vocab_size, dtype=idx.dtype, device=idx.device)
            if cache is not None and cache.last_token is not None:
                first = cache.last_token[:, None]
            x = x + self.wse(torch.cat([first, idx[:, :-1]], dim=1))
        x = self.drop(x)
        skip = self.skip_matrix(skip, n, idx.device)
        attn_bias_fn = attn_bias_fn if attn_bias_fn is not None else self.attn_bias_fn
        attn_qkv_fn = attn_qkv_fn if attn_qkv_fn is not None else self.attn_qkv_fn
        hidden, attentions, all_logits = [x], [], []
        for i, block in enumerate(self.blocks):
            skipped = skip[:, i] if skip is not None else None  # (N,) bool
            key_valid = None
            if cache is not None:
                written = torch.ones(n, length, dtype=torch.bool, device=idx.device)
                if skipped is not None:
                    written = written & ~skipped[:, None]
                key_valid = cache.append_valid(i, written)
            if skipped is not None and bool(skipped.all()):
                if cache is not None:  # keep every layer's cache the same length; these slots are invalid
                    d = self.config.n_embd // self.config.n_head
                    z = x.new_zeros(n, self.config.n_head, length, d)
                    cache.append_kv(i, z, z)
                attentions.append(None)
            else:
                mask, is_causal = self._attn_mask(i, length, past + length, attn_bias_fn, key_valid, idx.device)
                y, att = block(x, mask, is_causal, cache, capture, attn_qkv_fn)
                if skipped is not None and bool(skipped.any()):
                    y = torch.where(skipped[:, None, None], x, y)
                    if att is not None:
                        att = att.masked_fill(skipped[:, None, None, None], 0.0)
                x = y
                attentions.append(att)
            hidden.append(x)
            if return_all_logits:
                all_logits.append(self.lm_head(self.ln_f(x)))
        if cache is not None:
            cache.length += length
            cache.last_token = idx[:, -1]
        out = all_logits if return_all_logits else self.lm_head(self.ln_f(x))
        if capture:
            return out, {"hidden_states": hidden, "attentions": attentions}
        return out

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, skip=None, use_cache: bool = True, attn_bias_fn=None):
        """Greedy decoding: idx (N,T) → (N, T+max_new_tokens). With ``use_cache`` the prompt is prefilled once
        and each new token costs one single-position forward; without it the whole (cropped) context is re-run."""
        if use_cache and not self.config.causal:
            raise ValueError("use_cache=True needs a causal model (GPTConfig.causal=True)")
        if max_new_tokens <= 0:
            return idx
        if use_cache:
            if idx.shape[1] + max_new_tokens - 1 > self.config.block_size:
                raise ValueError(f"prompt + new tokens exceed block_size {self.config.block_size} with use_cache")
            cache = KVCache(self.config.n_layer)
            logits = self(idx, skip=skip, cache=cache, attn_bias_fn=attn_bias_fn)
            for t in range(max_new_tokens):
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                idx = torch.cat([idx, nxt], dim=1)
                if t + 1 < max_new_tokens:
                    logits = self(nxt, skip=skip, cache=cache, attn_bias_fn=attn_bias_fn)
            return idx
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size:], skip=skip, attn_bias_fn=attn_bias_fn)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx
