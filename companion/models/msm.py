"""The one masked-speech-modelling (MSM) encoder, HuBERT-style, on the package's transformer.

Features (N, T, C) (e.g. log-mel) → per-channel standardisation (buffers set by :meth:`MSMEncoder.normalize_with`)
→ a convolutional subsampler (stride 2: T' = ceil(T/2) tokens, 20 ms each) → a learned mask embedding in place of
the masked tokens → :class:`~companion.models.gpt.GPT`'s blocks, bidirectional, through ``embeds=`` → final
LayerNorm → one linear head per target stream (k-means units, RVQ levels, …).

- :func:`to_tokens` — frame-rate targets or masks to the token rate (every second frame);
- :func:`msm_loss` — cross-entropy at the masked tokens, averaged over heads, each utterance's loss times its
  weight (Ask2Mask's utterance-level confidence; all ones otherwise);
- :class:`SpeechClassifier` — the same body, mean-pooled, with a linear classifier on top.

Masks are **True = keep** (``masks.frame_spans`` at the token rate).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gpt import GPT, GPTConfig


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, T, ...) frame-rate values → (N, ceil(T/2), ...): every second frame, aligned with the subsampler."""
    return x[:, ::2]


class MSMEncoder(nn.Module):
    def __init__(self, n_input: int = 40, heads: Sequence[int] = (64,), d: int = 64, n_layer: int = 2,
                 n_head: int = 4, max_frames: int = 128, dropout: float = 0.0):
        super().__init__()
        self.n_input = n_input
        self.register_buffer("mean", torch.zeros(n_input))
        self.register_buffer("std", torch.ones(n_input))
        self.subsample = nn.Sequential(nn.Conv1d(n_input, d, 3, stride=2, padding=1), nn.GELU(),
                                       nn.Conv1d(d, d, 3, padding=1))
        self.mask_embedding = nn.Parameter(torch.randn(d) * 0.02)
        self.transformer = GPT(GPTConfig(vocab_size=1, block_size=self.n_tokens(max_frames), n_layer=n_layer,
                                         n_head=n_head, n_embd=d, dropout=dropout, causal=False, tie_weights=False))
        self.heads = nn.ModuleList(nn.Linear(d, k) for k in heads)

    @staticmethod
    def n_tokens(frames: int) -> int:
        """Tokens the subsampler makes from ``frames`` frames: ceil(frames / 2)."""
        return (frames + 1) // 2

    @torch.no_grad()
    def normalize_with(self, feats: torch.Tensor) -> MSMEncoder:
        """Set the per-channel input mean and standard deviation from (N, T, C) training features."""
        flat = feats.reshape(-1, feats.shape[-1])
        self.mean.copy_(flat.mean(dim=0))
        self.std.copy_(flat.std(dim=0).clamp_min(1e-5))
        return self

    def encode(self, feats: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(N, T, C) features, keep (N, T') bool or None → (N, T', d) contextual token states."""
        x = (feats - self.mean) / self.std
        x = self.subsample(x.transpose(1, 2)).transpose(1, 2)  # (N, T', d)
        if keep is not None:
            x = torch.where(keep[..., None], x, self.mask_embedding.to(x.dtype))
        return self.transformer(embeds=x, hidden=True)

    def forward(self, feats: torch.Tensor, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
        """One (N, T', K_h) logit tensor per target head."""
        h = self.encode(feats, keep)
        return [head(h) for head in self.heads]

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, T, C) → (N, d): the unmasked token states averaged over time (utterance features for probes)."""
        return self.encode(feats).mean(dim=1)


def msm_loss(model: MSMEncoder, feats: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Masked prediction: cross-entropy of every head at the masked tokens (keep False), mean over heads.

    feats (N, T, C); targets (N, T', H) int64 (one column per head; (N, T') for one head); keep (N, T') bool;
    weights (N,) per-utterance loss weights (None = 1). The loss is Σ_i w_i Σ_masked CE / Σ masked tokens.
    """
    if targets.dim() == 2:
        targets = targets[..., None]
    logits = model(feats, keep)
    if len(logits) != targets.shape[-1]:
        raise ValueError(f"{len(logits)} heads but targets have {targets.shape[-1]} streams")
    masked = (~keep).float()  # (N, T')
    if weights is not None:
        masked = masked * weights.to(masked)[:, None]
    total = 0.0
    for h, lg in enumerate(logits):
        ce = F.cross_entropy(lg.transpose(1, 2), targets[..., h], reduction="none")  # (N, T')
        total = total + (ce * masked).sum() / (~keep).sum().clamp_min(1)
    return total / len(logits)


class SpeechClassifier(nn.Module):
    """An MSM encoder's mean-pooled states → a linear classifier: (N, T, C) → (N, n_classes) logits."""

    def __init__(self, encoder: MSMEncoder, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.mask_embedding.numel(), n_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder.pool(feats))
