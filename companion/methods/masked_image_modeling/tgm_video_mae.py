"""Text-guided masking for video MAE (Fan et al., "Text-Guided Video Masked Autoencoder", ECCV 2024).

Two ideas, both on one model (``VideoText``: a ``VideoMAE`` plus a small caption encoder and a projection):

* **Text-guided masking (TGM).** Score every tube token by the cosine similarity between its features and
  the clip's caption in a video–text embedding space (the paper: CLIP patch features vs the BLIP caption),
  then remove the best-matching tubes (``companion.masks.hard_patch_mask`` with the scores). Here the
  embedding space is a tiny ``VideoText`` trained contrastively with a max-over-tubes similarity (so that
  single tubes, not just the clip, align with the caption) — our stand-in for CLIP, cached as a teacher.
* **MAE + masked video–text contrastive (VTC).** The MAE loss on the removed tubes plus a symmetric InfoNCE
  between the mean of the *visible* tokens' embeddings and the caption embedding.

Captions are word-id triples from ``companion.data.video`` (colour, shape, direction).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import train, zoo
from ...data.video import VOCAB
from ...models.video_mae import VideoMAE


def info_nce(sim: torch.Tensor, scale: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a similarity matrix ``sim`` [N, N] (video i vs caption j).

    ``same`` [N, N] bool marks pairs with identical captions: they are all positives (soft targets spread
    evenly over them), so a repeated caption in the batch is not pushed away from its own video.
    """
    logits = sim * scale
    if same is None:
        same = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    target = same.float() / same.float().sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))


class VideoText(nn.Module):
    """A ``VideoMAE`` with a bag-of-words caption encoder and a shared embedding space of width ``embed_dim``."""

    def __init__(self, mae: VideoMAE, embed_dim: int = 32, vocab_size: int = len(VOCAB)):
        super().__init__()
        self.mae = mae
        self.text = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean")
        self.text_proj = nn.Linear(embed_dim, embed_dim)
        self.proj = nn.Linear(mae.cfg.dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def caption_embeddings(self, captions: torch.Tensor) -> torch.Tensor:
        """captions [N, W] word ids → unit vectors [N, E]."""
        return F.normalize(self.text_proj(self.text(captions)), dim=-1)

    def token_embeddings(self, clips: torch.Tensor, token_mask: torch.Tensor | None = None):
        """→ (``Encoded`` of the MAE encoder, unit token embeddings [N, K, E] of the visible tubes).
        ``token_mask=None`` encodes every tube."""
        if token_mask is None:
            token_mask = torch.ones(len(clips), self.mae.num_patches, dtype=torch.bool, device=clips.device)
        enc = self.mae.forward_encoder(clips, token_mask)
        return enc, F.normalize(self.proj(enc.latent[:, 1:]), dim=-1)

    def similarity(self, tokens: torch.Tensor, text: torch.Tensor, pool: str) -> torch.Tensor:
        """Video i vs caption j [N, N]: ``"mean"`` — cosine of the mean token embedding; ``"max"`` — the
        best-matching single tube (a multiple-instance objective that localises the caption)."""
        if pool == "mean":
            return F.normalize(tokens.mean(1), dim=-1) @ text.T
        if pool == "max":
            return torch.einsum("nke,me->nmk", tokens, text).amax(-1)
        raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}")

    def loss(self, clips: torch.Tensor, captions: torch.Tensor, token_mask: torch.Tensor | None = None,
             recon_weight: float = 1.0, vtc_weight: float = 0.0, pool: str = "mean") -> torch.Tensor:
        """``recon_weight`` · MAE loss on removed tubes + ``vtc_weight`` · InfoNCE(visible tokens, caption)."""
        enc, tokens = self.token_embeddings(clips, token_mask)
        total = clips.new_zeros(())
        if recon_weight:
            pred = self.mae.forward_decoder(enc.latent, enc.ids_restore)
            total = total + recon_weight * self.mae.forward_loss(clips, pred, enc.visible)
        if vtc_weight:
            same = (captions[:, None] == captions[None]).all(-1)
            sim = self.similarity(tokens, self.caption_embeddings(captions), pool)
            total = total + vtc_weight * info_nce(sim, self.logit_scale.exp().clamp(max=100), same)
        return total

    @torch.no_grad()
    def tube_caption_similarity(self, clips: torch.Tensor, captions: torch.Tensor, batch_size: int = 256):
        """Cosine similarity of every tube with the clip's own caption [N, L] (all tubes visible): TGM's score."""
        self.eval()
        device = next(self.parameters()).device

        def score(x, c):
            _, tokens = self.token_embeddings(x)
            return torch.einsum("nle,ne->nl", tokens, self.caption_embeddings(c))

        return train.predict(score, clips, captions, batch_size=batch_size, device=device)

    @torch.no_grad()
    def retrieval_correct(self, clips: torch.Tensor, captions: torch.Tensor, pool: str = "max") -> torch.Tensor:
        """Per clip (N,) bool: is its best-matching caption, among the distinct captions of ``captions``, its own?"""
        self.eval()
        device = next(self.parameters()).device
        distinct, own = torch.unique(captions, dim=0, return_inverse=True)
        _, tokens = self.token_embeddings(clips.to(device))
        sim = self.similarity(tokens, self.caption_embeddings(distinct.to(device)), pool)
        return sim.argmax(1).cpu() == own

    def retrieval_accuracy(self, clips: torch.Tensor, captions: torch.Tensor, pool: str = "max") -> float:
        """Share of clips whose best-matching caption, among the distinct captions of ``captions``, is their own."""
        return self.retrieval_correct(clips, captions, pool).float().mean().item()


def pretrain(model: VideoText, clips: torch.Tensor, captions: torch.Tensor, steps: int, mask_fn=None,
             recon_weight: float = 1.0, vtc_weight: float = 0.0, pool: str = "mean", seed: int = 0,
             **fit_kwargs) -> list[float]:
    """Train ``model`` with ``VideoText.loss`` for ``steps`` steps; ``mask_fn(n, generator)`` draws the token
    masks (None: every tube visible). Batches and masks are seeded by ``seed`` as in ``companion.mim.pretrain``,
    so runs with the same seed are paired. ``fit_kwargs`` go to ``companion.train.fit``."""
    g = torch.Generator().manual_seed(seed + 1)

    def loss_fn(m, x, c):
        mask = None if mask_fn is None else mask_fn(len(x), g).to(x.device)
        return m.loss(x, c, mask, recon_weight=recon_weight, vtc_weight=vtc_weight, pool=pool)

    return train.fit(model, clips, captions, steps, seed=seed, loss_fn=loss_fn, **fit_kwargs)


def aligner(clips: torch.Tensor, captions: torch.Tensor, steps: int, seed: int = 0, embed_dim: int = 32,
            lr: float = 3e-3, batch_size: int = 64, device: str = "auto", **mae_kwargs) -> VideoText:
    """The video–text aligner that scores tubes for TGM (our stand-in for CLIP): a ``VideoText`` trained with
    the max-over-tubes contrastive loss only, on unmasked clips; cached by ``companion.zoo``."""
    from ...runtime import resolve_device

    config = dict(steps=steps, seed=seed, embed_dim=embed_dim, lr=lr, batch_size=batch_size, mae=mae_kwargs,
                  device=resolve_device(device).type)

    def build():
        torch.manual_seed(seed)
        return VideoText(VideoMAE(**mae_kwargs), embed_dim)

    def fit_aligner(model):
        pretrain(model, clips, captions, steps, recon_weight=0.0, vtc_weight=1.0, pool="max", seed=seed, lr=lr,
                 batch_size=batch_size, device=device, desc="teacher: video-text aligner")

    return zoo.cached("video_text_aligner", config, build, fit_aligner, (clips, captions))
