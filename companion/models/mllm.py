"""A toy multimodal LLM: the package's GPT over [image tokens, text tokens] (LLaVA-style: a linear projection of a
frozen vision encoder's patch features into the language model's embedding space, image tokens first).

It is deliberately thin — the transformer, its attention-mask hook (``attn_bias_fn``) and its ``KVCache`` are
:class:`companion.models.gpt.GPT`'s — so grounding papers (a ``<SEG>`` token, ``[MASK]`` patch tokens) add only
their own vectors and masks:

- :func:`image_tokens` pools dense features (N, C, g, g) to a grid × grid of tokens, row-major;
- ``ToyMLLM.embed(tokens, ids)`` → the input vectors (N, Li + T, dim): projected image tokens, then the text ids'
  embeddings; extra learned vectors (e.g. a ``[MASK]`` embedding) are concatenated by the caller;
- with ``causal=True`` an ``attn_bias_fn`` mask can only restrict attention further (it is combined with causality
  by AND); a pattern in which earlier positions see later ones (STAMP's ``[MASK]`` tokens seeing each other) is
  built with ``causal=False`` and passed whole as the hook;
- ``ToyMLLM.forward(embeds, ...)`` → the final LayerNorm'd states (N, L, dim) (positions are added inside);
  ``.logits(hidden)`` → next-word logits over ``vocab``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gpt import GPT, GPTConfig
from .layers import KVCache


def image_tokens(dense: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, g, g) dense features → (N, grid², C) tokens (area pooling to grid × grid, row-major)."""
    pooled = F.adaptive_avg_pool2d(dense, grid) if dense.shape[-1] != grid else dense
    return pooled.flatten(2).transpose(1, 2)


class ToyMLLM(nn.Module):
    def __init__(self, vocab: tuple[str, ...], image_dim: int = 64, max_len: int = 128, n_layer: int = 2,
                 n_head: int = 4, dim: int = 64, causal: bool = True):
        super().__init__()
        self.vocab = tuple(vocab)
        self.gpt = GPT(GPTConfig(vocab_size=len(self.vocab), block_size=max_len, n_layer=n_layer, n_head=n_head,
                                 n_embd=dim, causal=causal))
        self.image_proj = nn.Linear(image_dim, dim)

    def embed(self, image_tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(N, Li, image_dim) image tokens and (N, T) text ids → (N, Li + T, dim) input vectors (image first)."""
        return torch.cat([self.image_proj(image_tokens), self.gpt.wte(ids)], dim=1)

    def forward(self, embeds: torch.Tensor, attn_bias_fn=None, cache: KVCache | None = None, capture: bool = False):
        """(N, L, dim) input vectors → (N, L, dim) final states (with ``capture``: also the GPT's capture dict,
        whose ``hidden_states`` are the input and every layer's output)."""
        return self.gpt(embeds=embeds, hidden=True, attn_bias_fn=attn_bias_fn, cache=cache, capture=capture)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, L, dim) final states → (N, L, len(vocab)) next-word logits (the GPT's tied head)."""
        return self.gpt.lm_head(hidden)
