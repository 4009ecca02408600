"""A tiny GPT (nanoGPT-style) with the hooks the sequence-masking papers need.

- causal or bidirectional self-attention (``GPTConfig.causal``): the shared ``Block`` and ``Attention`` of
  :mod:`companion.models.layers`, through ``F.scaled_dot_product_attention``;
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

from ..masks.attention import causal_mask
from .layers import MLP, Attention, Block, KVCache


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


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def init_gpt2_(model: nn.Module, n_layers: int) -> None:
    """GPT-2 initialisation in place: N(0, 0.02) weights and zero biases for every linear and embedding, then
    N(0, 0.02/√(2·n_layers)) for the projections that write into the residual stream (``Attention.proj``,
    ``MLP.fc2``)."""
    model.apply(_init_weights)
    std = 0.02 / math.sqrt(2 * n_layers)
    for module in model.modules():  # module order: the same draws as before the layers were shared
        if isinstance(module, Attention):
            nn.init.normal_(module.proj.weight, mean=0.0, std=std)
        elif isinstance(module, MLP):
            nn.init.normal_(module.fc2.weight, mean=0.0, std=std)


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
        self.blocks = nn.ModuleList(Block(config.n_embd, config.n_head, config.mlp_ratio, config.dropout, layer_idx=i)
                                    for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        init_gpt2_(self, config.n_layer)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight

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

    def forward(self, idx=None, skip=None, cache: KVCache | None = None, attn_bias_fn=None,
                return_all_logits: bool = False, capture: bool = False, attn_qkv_fn=None,
                embeds: torch.Tensor | None = None, hidden: bool = False):
        """idx (N,L) token ids → logits (N,L,V).

        embeds: (N,L,D) input vectors used instead of the token embedding of ``idx`` (positions are still added;
        e.g. speech frames or sums of codebook embeddings); ``idx`` is then only needed for ``token_shift``.
        hidden: return the final LayerNorm'd states (N,L,D) instead of the logits.

        skip: (n_layer,) or (N, n_layer) bool, True = that layer is the identity for that sequence.
        cache: a ``KVCache`` continued in place (idx are the next L tokens after ``cache.length``).
        return_all_logits: return a list of n_layer logits, one after every layer (skipped layers repeat).
        attn_qkv_fn: content hook ``(layer_idx, q, k, v) -> bias | bool mask | None``; overrides the model's.
        capture: also return ``{"hidden_states": [n_layer+1 × (N,L,D)], "attentions": [n_layer × (N,H,L,K)]}``
        (attention is None for a layer skipped by the whole batch; rows of skipped sequences are zero).
        """
        n, length = (idx if embeds is None else embeds).shape[:2]
        device = (idx if embeds is None else embeds).device
        past = cache.length if cache is not None else 0
        if past + length > self.config.block_size:
            raise ValueError(f"sequence length {past + length} exceeds block_size {self.config.block_size}")
        pos = torch.arange(past, past + length, device=device)
        x = (self.wte(idx) if embeds is None else embeds) + self.wpe(pos)  # (N,L,D)
        if self.wse is not None:
            first = torch.full((n, 1), self.config.vocab_size, dtype=idx.dtype, device=idx.device)
            if cache is not None and cache.last_token is not None:
                first = cache.last_token[:, None]
            x = x + self.wse(torch.cat([first, idx[:, :-1]], dim=1))
        x = self.drop(x)
        skip = self.skip_matrix(skip, n, device)
        attn_bias_fn = attn_bias_fn if attn_bias_fn is not None else self.attn_bias_fn
        attn_qkv_fn = attn_qkv_fn if attn_qkv_fn is not None else self.attn_qkv_fn
        states, attentions, all_logits = [x], [], []
        for i, block in enumerate(self.blocks):
            skipped = skip[:, i] if skip is not None else None  # (N,) bool
            key_valid = None
            if cache is not None:
                written = torch.ones(n, length, dtype=torch.bool, device=device)
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
                mask, is_causal = self._attn_mask(i, length, past + length, attn_bias_fn, key_valid, device)
                y, att = block(x, mask, is_causal, cache, capture, attn_qkv_fn)
                if skipped is not None and bool(skipped.any()):
                    y = torch.where(skipped[:, None, None], x, y)
                    if att is not None:
                        att = att.masked_fill(skipped[:, None, None, None], 0.0)
                x = y
                attentions.append(att)
            states.append(x)
            if return_all_logits:
                all_logits.append(self.lm_head(self.ln_f(x)))
        if cache is not None:
            cache.length += length
            cache.last_token = None if idx is None else idx[:, -1]
        if hidden:
            out = self.ln_f(x)
        else:
            out = all_logits if return_all_logits else self.lm_head(self.ln_f(x))
        if capture:
            return out, {"hidden_states": states, "attentions": attentions}
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
