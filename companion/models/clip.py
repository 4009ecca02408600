"""A toy CLIP: the package's ViT as image tower and its GPT (bidirectional) as text tower, trained contrastively
on image-level captions only (as CLIP was), so patch tokens are never taught to localise.

- ``encode_image(images)`` → (N, D) unit-norm embeddings (the ViT's [CLS] state, projected);
- ``dense_features(images)`` → (N, D, g, g) the projected patch tokens (for mask pooling and dense prompts);
- ``encode_text(ids)`` → (N, D) unit-norm embeddings: the text tower's states averaged over the non-``<pad>``
  words, projected (captions name a set of objects in random order, so the pooling is order-free);
- :func:`clip_loss` — the symmetric InfoNCE over the batch's image–text similarities (Radford et al. 2021), with
  a learned temperature (``logit_scale``, clamped at 100 as in CLIP);
- ``classifier(names)`` → (K, D) the text embeddings of class names: the zero-shot classifier.

Token ids come from :mod:`companion.data.words` (``<pad>`` = 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import refer, words
from .gpt import GPT, GPTConfig
from .vit import ViT


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """(N, D) unit-norm image and text embeddings of N matching pairs → the mean of the image→text and
    text→image cross-entropies over the (N, N) similarity matrix scaled by exp(logit_scale) (at most 100)."""
    logits = image_emb @ text_emb.T * logit_scale.exp().clamp(max=100.0)
    target = torch.arange(len(image_emb), device=image_emb.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class ToyCLIP(nn.Module):
    def __init__(self, vocab_size: int, max_words: int, image_size: int = 32, patch_size: int = 4, dim: int = 64,
                 depth: int = 4, text_layers: int = 2, heads: int = 4):
        super().__init__()
        self.image = ViT(image_size=image_size, patch_size=patch_size, dim=dim, depth=depth, heads=heads,
                         num_classes=1)
        self.text = GPT(GPTConfig(vocab_size=vocab_size, block_size=max_words, n_layer=text_layers, n_head=heads,
                                  n_embd=dim, causal=False, tie_weights=False))
        self.image_proj = nn.Linear(dim, dim, bias=False)
        self.text_proj = nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, 1 + L, D) the image tower's final states ([CLS] first)."""
        return self.image.forward_features(images, all_tokens=True)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self._tokens(images)[:, 0]), dim=-1)

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, D, g, g) projected patch tokens on the patch grid (not normalised)."""
        patches = self.image_proj(self._tokens(images)[:, 1:])  # (N, L, D)
        g = self.image.grid
        return patches.transpose(1, 2).reshape(len(images), -1, g, g)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        states = self.text(ids, hidden=True)  # (N, T, D)
        words = (ids != 0).to(states.dtype)[..., None]
        pooled = (states * words).sum(1) / words.sum(1).clamp_min(1.0)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def classifier(self, names: list[str], vocab: tuple[str, ...] | None = None) -> torch.Tensor:
        """Class names or phrases (e.g. ``refer.CLASSES``) → (K, D) unit-norm text embeddings, the zero-shot
        classifier: logits = ``encode_image(x) @ classifier(names).T * logit_scale.exp()``."""
        ids = words.encode(list(names), vocab or refer.VOCAB, self.text.config.block_size)
        return self.encode_text(ids.to(self.logit_scale.device))

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The contrastive loss of N matching (image, caption) pairs."""
        return clip_loss(self.encode_image(images), self.encode_text(ids), self.logit_scale)
