"""A tiny encoder-decoder transformer (T5/BART-shaped, pre-LN) with per-layer hidden states and exit heads.

Built from the shared layers of :mod:`companion.models.layers`, initialised like the GPT: the encoder is a stack
of bidirectional ``Block``s, each decoder layer is causal self-attention (``Attention``, with the ``KVCache`` for
step-by-step decoding), cross-attention to the encoder's memory (``Attention(cross=True)``), and the ``MLP``.
One final LayerNorm and one linear head (tied to the decoder's token embedding) serve every exit: the logits
after decoder layer ``j`` are ``head(ln_f(h_j))``; the memory after encoder layer ``k`` is ``ln_enc(h_k)``. So
"exit after layer k" needs no extra parameters, as in MuE, where all exits share the output layer.

Shapes: source ``src`` (N, S) token ids, or (N, S, F) continuous features with ``src_dim = F`` (a linear
projection replaces the source embedding: a small feature encoder), and decoder input ``tgt`` (N, T) token ids;
hidden states (N, S|T, D). ``causal=False`` makes the decoder's self-attention bidirectional (a mask-diffusion
denoiser: every position sees every other); the default causal decoder decodes step by step with the KV cache
(:meth:`Seq2Seq.greedy`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .gpt import init_gpt2_
from .layers import MLP, Attention, Block, KVCache


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
    causal: bool = True  # False: bidirectional decoder self-attention (mask diffusion)
    src_dim: int = 0  # > 0: the source is (N, S, src_dim) continuous features, projected linearly


class DecoderBlock(nn.Module):
    """Pre-LN decoder layer: x + attn(norm1(x)) (causal), x + cross(norm_cross(x), memory), x + mlp(norm2(x))."""

    def __init__(self, config: Seq2SeqConfig, layer_idx: int):
        super().__init__()
        d, h = config.n_embd, config.n_head
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, h, dropout=config.dropout, layer_idx=layer_idx)
        self.norm_cross = nn.LayerNorm(d)
        self.cross = Attention(d, h, cross=True, dropout=config.dropout, layer_idx=layer_idx)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = MLP(d, config.mlp_ratio, config.dropout)
        self.causal = config.causal

    def forward(self, x, memory, cache: KVCache | None = None):
        """x (N,T,D), memory (N,S,D) → (N,T,D). Teacher forcing (cache None): causal over x's positions. With a
        cache: x holds the next position(s) after the cached ones and attends every cached position (use one
        position at a time). A bidirectional block (``config.causal`` False) lets every position attend all."""
        y, _ = self.attn(self.norm1(x), is_causal=self.causal and cache is None and x.shape[1] > 1, cache=cache)
        x = x + y
        x = x + self.cross(self.norm_cross(x), memory)[0]
        return x + self.mlp(self.norm2(x))


class Seq2Seq(nn.Module):
    """Encoder-decoder transformer whose every layer can be an exit (shared ``ln_enc``, ``ln_f`` and head)."""

    def __init__(self, config: Seq2SeqConfig | None = None, **kwargs):
        super().__init__()
        self.config = config = config or Seq2SeqConfig(**kwargs)
        self.src_tok = (nn.Linear(config.src_dim, config.n_embd) if config.src_dim > 0
                        else nn.Embedding(config.vocab_size, config.n_embd))
        self.tgt_tok = nn.Embedding(config.vocab_size, config.n_embd)
        # one position table for source and target: answer position i finds source position i without
        # first learning a mapping between two tables (copying then needs no phase transition)
        self.pos = nn.Embedding(max(config.src_len, config.tgt_len), config.n_embd)
        self.encoder = nn.ModuleList(Block(config.n_embd, config.n_head, config.mlp_ratio, config.dropout, layer_idx=i)
                                     for i in range(config.n_enc))
        self.decoder = nn.ModuleList(DecoderBlock(config, i) for i in range(config.n_dec))
        self.ln_enc = nn.LayerNorm(config.n_embd)
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        init_gpt2_(self, config.n_enc + config.n_dec)  # the same initialisation as the decoder-only model
        self.head.weight = self.tgt_tok.weight

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- encoder ---------------------------------------------------------------------------------------------
    def encode(self, src, n_layers: int | None = None) -> list[torch.Tensor]:
        """src (N,S) ids or (N,S,src_dim) features → the residual stream before and after each encoder layer:
        ``n_layers + 1`` tensors (N,S,D) (default all layers). No final LayerNorm; :meth:`memory` applies it."""
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

    @torch.no_grad()
    def greedy(self, memory: torch.Tensor, steps: int, bos: int, eos: int | None = None) -> tuple[torch.Tensor, int]:
        """Greedy causal decoding with the KV cache: memory (N,S,D) → tokens (N, steps) and the number of decoder
        passes made (one per token position). With ``eos``, decoding stops once every sequence has emitted it
        (positions not decoded are filled with ``eos``)."""
        if not self.config.causal:
            raise ValueError("greedy decoding needs a causal decoder (config.causal=True)")
        n = memory.shape[0]
        cache = KVCache(self.config.n_dec)
        token = torch.full((n, 1), bos, dtype=torch.long, device=memory.device)
        out = torch.full((n, steps), bos if eos is None else eos, dtype=torch.long, device=memory.device)
        done = torch.zeros(n, dtype=torch.bool, device=memory.device)
        for t in range(steps):
            x = self.embed_tgt(token, start=t)
            for block in self.decoder:
                x = block(x, memory, cache)
            cache.length += 1
            token = self.logits(x[:, -1]).argmax(-1, keepdim=True)
            out[:, t] = token[:, 0]
            if eos is not None:
                done = done | (token[:, 0] == eos)
                if bool(done.all()):
                    return out, t + 1
        return out, steps
