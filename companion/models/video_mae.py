"""A tiny video MAE (Tong et al., VideoMAE): the image MAE of ``companion.models.mae`` on tube tokens.

A clip [N, C, T, H, W] is cut into tubes of ``tubelet`` frames × ``patch_size``² pixels by a strided 3-D
convolution; tokens are ordered (time, row, column), L = T/tubelet · (H/patch_size)². Position embeddings are
VideoMAE's fixed 1-D sine-cosine table over the L tokens. Everything else — masking with a token mask
(True = visible), the visible-only encoder, the decoder and the loss on removed tubes — is ``MAE``'s own.

``VideoText`` adds a bag-of-words caption encoder and a shared video–text embedding space to a ``VideoMAE``
(Fan et al., "Text-Guided Video Masked Autoencoder"): trained contrastively (``info_nce``) it scores tubes by
their similarity to the clip's caption (text-guided masking), and the same loss added to the MAE loss is the
paper's masked video–text contrastive learning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.video import VOCAB
from .layers import PatchEmbed
from .mae import MAE, MAEConfig


def sincos_1d(dim: int, length: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 1-D sine-cosine position table [1+length, dim] (a zero row for [CLS]), as in VideoMAE."""
    if dim % 2:
        raise ValueError(f"dim must be even for a sin-cos embedding, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angle = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]  # [L, D/2]
    emb = torch.cat([angle.sin(), angle.cos()], dim=1).float()
    return torch.cat([torch.zeros(1, dim), emb]) if cls_token else emb


@dataclass
class VideoMAEConfig(MAEConfig):
    image_size: int = 16
    frames: int = 4
    tubelet: int = 2  # frames per tube


class VideoMAE(MAE):
    """``MAE`` on tube tokens: clips [N, C, T, H, W] → (loss, pred [N, L, P], visible [N, L]),
    P = tubelet · patch_size² · C."""

    def __init__(self, cfg: VideoMAEConfig | None = None, **kwargs):
        cfg = cfg or VideoMAEConfig(**kwargs)
        if cfg.frames % cfg.tubelet:
            raise ValueError(f"frames {cfg.frames} is not a multiple of tubelet {cfg.tubelet}")
        super().__init__(cfg)
        p, u = cfg.patch_size, cfg.tubelet
        self.time_grid = cfg.frames // u
        self.num_patches = self.time_grid * self.grid**2
        self.patch_embed = PatchEmbed(p, cfg.in_channels, cfg.dim, tubelet=u)
        self.register_buffer("pos_embed", sincos_1d(cfg.dim, self.num_patches)[None], persistent=False)
        self.register_buffer("decoder_pos_embed", sincos_1d(cfg.decoder_dim, self.num_patches)[None],
                             persistent=False)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, u * p * p * cfg.in_channels)

    def patchify(self, clips: torch.Tensor) -> torch.Tensor:
        """[N, C, T, H, W] → [N, L, P], each tube flattened as (frame, row, column, channel)."""
        n, c = clips.shape[:2]
        p, u, g, tg = self.cfg.patch_size, self.cfg.tubelet, self.grid, self.time_grid
        x = clips.reshape(n, c, tg, u, g, p, g, p)
        return torch.einsum("nctuhpwq->nthwupqc", x).reshape(n, tg * g * g, u * p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, P] → [N, C, T, H, W] (inverse of ``patchify``)."""
        n = x.shape[0]
        p, u, g, tg, c = self.cfg.patch_size, self.cfg.tubelet, self.grid, self.time_grid, self.cfg.in_channels
        x = torch.einsum("nthwupqc->nctuhpwq", x.reshape(n, tg, g, g, u, p, p, c))
        return x.reshape(n, c, tg * u, g * p, g * p)

    def visible_pixels(self, visible: torch.Tensor) -> torch.Tensor:
        """Token mask [N, L] → pixel mask [N, 1, T, H, W] (1 where the tube is visible)."""
        n = visible.shape[0]
        p, u, g = self.cfg.patch_size, self.cfg.tubelet, self.grid
        m = visible.float().reshape(n, 1, self.time_grid, g, g)
        return m.repeat_interleave(u, 2).repeat_interleave(p, 3).repeat_interleave(p, 4)


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
    """A ``VideoMAE`` with a bag-of-words caption encoder and a shared embedding space of width ``embed_dim``.

    Captions are word ids [N, W] into ``companion.data.video.VOCAB``."""

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
        """Cosine similarity of every tube with the clip's own caption [N, L] on the CPU (all tubes visible):
        TGM's score."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for i in range(0, len(clips), batch_size):
            _, tokens = self.token_embeddings(clips[i:i + batch_size].to(device))
            text = self.caption_embeddings(captions[i:i + batch_size].to(device))
            out.append(torch.einsum("nle,ne->nl", tokens, text).float().cpu())
        return torch.cat(out)

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
