"""A tiny encoder-decoder transformer (T5/BART-shaped, pre-LN) with per-layer hidden states and exit heads.

Built from the blocks of :mod:`companion.models.gpt`: the encoder is a stack of bidirectional ``Block``s, each
decoder layer is causal self-attention (``CausalSelfAttention``, with the ``KVCache`` for step-by-step
decoding), cross-attention to the encoder's memory, and the ``MLP``. One final LayerNorm and one linear head
(tied to the decoder's token embedding) serve every exit: the logits after decoder layer ``j`` are
``head(ln_f(h_j))``; the memory after encoder layer ``k`` is ``ln_enc(h_k)``. So "exit after layer k" needs
no extra parameters, as in MuE, where all exits share the output layer.

Shapes: source ``src`` (N, S) and decoder input ``tgt`` (N, T) token ids; hidden states (N, S|T, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gpt import GPT, MLP, Block, CausalSelfAttention, GPTConfig, KVCache


@dataclass
class Seq2SeqConfig:
    vocab_size: int = 16
    src_len: int = 16  # longest source
    tgt_len: int = 16  # longest decoder input
    n_enc: int = 4
    n_dec: int = 4
    n_head: int = 4
    n_embd: int = 64
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def block_config(self, causal: bool) -> GPTConfig:
        return GPTConfig(vocab_size=self.vocab_size, n_head=self.n_head, n_embd=self.n_embd,
                         mlp_ratio=self.mlp_ratio, dropout=self.dropout, causal=causal)


class CrossAttention(nn.Module):
    """Multi-head attention from decoder positions (queries) to the encoder memory (keys and values)."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.q = nn.Linear(config.n_embd, config.n_embd)
        self.kv = nn.Linear(config.n_embd, 2 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, memory):
        """x (N,T,D), memory (N,S,D) → (N,T,D)."""
        n, t, d = x.shape
        h = self.n_head
        q = self.q(x).view(n, t, h, d // h).transpose(1, 2)  # (N,H,T,hd)
        k, v = (z.view(n, memory.shape[1], h, d // h).transpose(1, 2) for z in self.kv(memory).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        return self.resid_dropout(self.c_proj(y))


class DecoderBlock(nn.Module):
    """Pre-LN decoder layer: x + self_attn(ln(x)) (causal), x + cross_attn(ln(x), memory), x + mlp(ln(x))."""

    def __init__(self, config: Seq2SeqConfig, layer_idx: int):
        super().__init__()
        gpt_config = config.block_config(causal=True)
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(gpt_config, layer_idx)
        self.ln_cross = nn.LayerNorm(config.n_embd)
        self.cross = CrossAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(gpt_config)

    def forward(self, x, memory, cache: KVCache | None = None):
        """Teacher forcing (cache None): causal over x's positions. With a cache: x holds the next position(s)
        after the cached ones and attends every cached position (use one position at a time)."""
        y, _ = self.attn(self.ln_1(x), is_causal=cache is None and x.shape[1] > 1, cache=cache)
        x = x + y
        x = x + self.cross(self.ln_cross(x), memory)
        return x + self.mlp(self.ln_2(x))


class Seq2Seq(nn.Module):
    """Encoder-decoder transformer whose every layer can be an exit (shared ``ln_enc``, ``ln_f`` and head)."""

    def __init__(self, config: Seq2SeqConfig | None = None, **kwargs):
        super().__init__()
        self.config = config = config or Seq2SeqConfig(**kwargs)
        self.src_tok = nn.Embedding(config.vocab_size, config.n_embd)
        self.tgt_tok = nn.Embedding(config.vocab_size, config.n_embd)
        # one position table for source and target: answer position i finds source position i without
        # first learning a mapping between two tables (copying then needs no phase transition)
        self.pos = nn.Embedding(max(config.src_len, config.tgt_len), config.n_embd)
        self.encoder = nn.ModuleList(Block(config.block_config(causal=False), i) for i in range(config.n_enc))
        self.decoder = nn.ModuleList(DecoderBlock(config, i) for i in range(config.n_dec))
        self.ln_enc = nn.LayerNorm(config.n_embd)
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(GPT._init_weights)  # the same GPT-2 initialisation as the decoder-only model
        depth = config.n_enc + config.n_dec
        for name, p in self.named_parameters():  # GPT-2 scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * depth))
        self.head.weight = self.tgt_tok.weight

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- encoder ---------------------------------------------------------------------------------------------
    def encode(self, src, n_layers: int | None = None) -> list[torch.Tensor]:
        """src (N,S) → the residual stream before and after each encoder layer: ``n_layers + 1`` tensors
        (N,S,D) (default all layers). No final LayerNorm; :meth:`memory` applies it."""
        n_layers = self.config.n_enc if n_layers is None else n_layers
        x = self.src_tok(src) + self.pos(torch.arange(src.shape[1], device=src.device))
        states = [x]
        for block in self.encoder[:n_layers]:
            x, _ = block(x)
            states.append(x)
        return states

    def memory(self, state: torch.Tensor) -> torch.Tensor:
        """An encoder hidden state (N,S,D) → the memory the decoder cross-attends to (N,S,D)."""
        return self.ln_enc(state)

    # -- decoder ---------------------------------------------------------------------------------------------
    def embed_tgt(self, tgt, start: int = 0):
        pos = torch.arange(start, start + tgt.shape[1], device=tgt.device)
        return self.tgt_tok(tgt) + self.pos(pos)

    def decode(self, tgt, memory, n_layers: int | None = None) -> list[torch.Tensor]:
        """Teacher forcing: tgt (N,T), memory (N,S,D) → the decoder's residual stream before and after each
        layer, ``n_layers + 1`` tensors (N,T,D) (default all layers)."""
        n_layers = self.config.n_dec if n_layers is None else n_layers
        x = self.embed_tgt(tgt)
        states = [x]
        for block in self.decoder[:n_layers]:
            x = block(x, memory)
            states.append(x)
        return states

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """A decoder hidden state (..., D) → logits (..., V) through the shared exit head."""
        return self.head(self.ln_f(state))

    def forward(self, src, tgt, return_all_logits: bool = False):
        """src (N,S), tgt (N,T) → logits (N,T,V) of the full model, or with ``return_all_logits`` a list of
        ``n_dec`` logits, one after every decoder layer."""
        memory = self.memory(self.encode(src)[-1])
        states = self.decode(tgt, memory)
        if return_all_logits:
            return [self.logits(h) for h in states[1:]]
        return self.logits(states[-1])
