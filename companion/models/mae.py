"""A tiny Masked Autoencoder (He et al., 2022) on the shared blocks of ``companion.models.layers``.

Mask convention for this module: a token mask is bool ``(N, L)`` with **True = visible** (kept, seen by the
encoder) and False = removed (to be reconstructed) — the same as ``companion.masks``. The MAE reference code
uses the opposite float mask ("0 is keep, 1 is remove"); here ``~visible`` is that mask.

Two encoder modes (``MAEConfig.mode``):

* ``"mae"`` — the encoder sees only the visible tokens (gathered with ``ids_keep``); the decoder appends
  one learned mask token per removed patch and un-shuffles them with ``ids_restore``.
* ``"simmim"`` — the encoder sees the full sequence, a learned ``mask_token`` replacing each removed patch
  embedding (Xie et al., SimMIM); the decoder then reads the full sequence directly
  (``decoder_depth=0`` gives SimMIM's linear head).

``MAEConfig(loss_predictor=True)`` adds HPM's auxiliary decoder branch (Wang et al., "Hard Patches Mining"):
a second stack of decoder blocks on the same decoder input that predicts one score per patch — how hard that
patch is to reconstruct (``forward_loss_predictor``). It is trained by ``companion.methods.masked_image_modeling.hpm``.

Shapes: N images, L = (image_size / patch_size)² patches, K visible patches, D encoder width,
Dd decoder width, P = patch_size² · channels pixel values per patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from ..masks.tokens import num_visible
from .layers import Block, PatchEmbed


@dataclass
class MAEConfig:
    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    decoder_dim: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = False
    mode: str = "mae"  # "mae" (encoder sees visible tokens only) or "simmim" (mask token in the encoder)
    loss_predictor: bool = False  # add HPM's loss-prediction decoder branch (``MAE.loss_predictor``)


class Encoded(NamedTuple):
    latent: torch.Tensor  # [N, 1+K, D] ("mae") or [N, 1+L, D] ("simmim"), after the final LayerNorm
    visible: torch.Tensor  # [N, L] bool, True = visible
    ids_restore: torch.Tensor  # [N, L] position of each patch in the (visible first) shuffled order
    hidden: list[torch.Tensor] | None  # per block output, before the final norm, each shaped like latent
    attention: list[torch.Tensor] | None  # per block [N, heads, T, T]


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding as in MAE: [1+grid², dim] (a zero row for [CLS])."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4 for a 2-D sin-cos embedding, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # [D/4]
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):  # half the channels for rows, half for columns
        angle = coord[:, None] * omega[None]  # [L, D/4]
        parts += [angle.sin(), angle.cos()]
    emb = torch.cat(parts, dim=1).float()  # [L, D]
    return torch.cat([torch.zeros(1, dim), emb]) if cls_token else emb


class LossPredictor(nn.Module):
    """HPM's auxiliary decoder: decoder blocks of their own → LayerNorm → one score per token.

    Reads the same decoder input as the reconstruction branch ([N, 1+L, Dd], mask tokens and position
    embedding included) and returns [N, L] scores (the [CLS] token dropped). Only the ranking of the scores
    within an image is trained, so they have no unit.
    """

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg.decoder_dim, cfg.decoder_heads, cfg.mlp_ratio, layer_idx=i)
                                    for i in range(cfg.decoder_depth))
        self.norm = nn.LayerNorm(cfg.decoder_dim)
        self.head = nn.Linear(cfg.decoder_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 1+L, Dd] → predicted loss scores [N, L]."""
        for blk in self.blocks:
            x, _ = blk(x)
        return self.head(self.norm(x))[:, 1:, 0]


class MAE(nn.Module):
    """Patch embedding → random masking → ViT encoder → (mask tokens) → light decoder → pixels of each patch."""

    def __init__(self, cfg: MAEConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or MAEConfig(**kwargs)
        if cfg.mode not in ("mae", "simmim"):
            raise ValueError(f"mode must be 'mae' or 'simmim', got {cfg.mode!r}")
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.grid = cfg.image_size // cfg.patch_size
        self.num_patches = self.grid**2
        # encoder
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_channels, cfg.dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.register_buffer("pos_embed", sincos_pos_embed(cfg.dim, self.grid)[None], persistent=False)
        self.enc_mask_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02) if cfg.mode == "simmim" else None
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, layer_idx=i) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        # decoder
        self.decoder_embed = nn.Linear(cfg.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, cfg.decoder_dim) * 0.02) if cfg.mode == "mae" else None
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(cfg.decoder_dim, self.grid)[None],
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(cfg.decoder_dim, cfg.decoder_heads, cfg.mlp_ratio, layer_idx=i)
                                            for i in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, cfg.patch_size**2 * cfg.in_channels)
        # built last, so a model without it is initialised exactly as before
        self.loss_predictor = LossPredictor(cfg) if cfg.loss_predictor else None

    # ---- pixels <-> patches -------------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] → [N, L, P], each patch flattened as (row, column, channel) like MAE."""
        n, c, _, _ = imgs.shape
        p, g = self.cfg.patch_size, self.grid
        x = imgs.reshape(n, c, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, P] → [N, C, H, W] (inverse of ``patchify``)."""
        n = x.shape[0]
        p, g, c = self.cfg.patch_size, self.grid, self.cfg.in_channels
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(n, g, g, p, p, c))
        return x.reshape(n, c, g * p, g * p)

    # ---- masking -----------------------------------------------------------------------------------------
    def random_masking(self, x: torch.Tensor, ratio: float, generator: torch.Generator | None = None):
        """Keep exactly ``L - round(ratio·L)`` tokens per row, chosen uniformly (argsort of uniform noise).

        x [N, L, D] → (x_visible [N, K, D], visible [N, L] bool, ids_restore [N, L]). With the same
        generator state this draws the same mask as ``companion.masks.token_ratio_mask``.
        """
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        n, length, _ = x.shape
        n_keep = num_visible(length, ratio)
        noise = torch.rand(n, length, generator=generator).to(x.device)  # [N, L]
        ids_shuffle = noise.argsort(dim=1)  # small noise first = kept
        ids_restore = ids_shuffle.argsort(dim=1)  # [N, L]
        visible = ids_restore < n_keep  # [N, L]
        return self._gather(x, ids_shuffle[:, :n_keep]), visible, ids_restore

    @staticmethod
    def _gather(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x [N, L, D], ids [N, K] → [N, K, D]."""
        return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))

    @staticmethod
    def ids_from_mask(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """visible [N, L] bool, same count per row → (ids_keep [N, K], ids_restore [N, L]).

        The visible patches come first in their original order (a stable sort), then the removed ones.
        """
        counts = visible.sum(dim=1)
        if len(counts) and (counts != counts[0]).any():
            raise ValueError(f"token_mask must keep the same number of tokens in every row, got {counts.tolist()}")
        ids_shuffle = (~visible).to(torch.uint8).argsort(dim=1, stable=True)  # [N, L]
        n_keep = int(counts[0]) if len(counts) else 0
        return ids_shuffle[:, :n_keep], ids_shuffle.argsort(dim=1)

    # ---- the three stages ----------------------------------------------------------------------------------
    def forward_encoder(self, imgs: torch.Tensor, token_mask: torch.Tensor | None = None, ratio: float = 0.75,
                        generator: torch.Generator | None = None, return_hidden: bool = False,
                        return_attention: bool = False) -> Encoded:
        """imgs [N, C, H, W]; ``token_mask`` [N, L] bool (True = visible, equal count per row) or None to draw a
        random mask with ``ratio``. In ``"mae"`` mode only the visible tokens enter the encoder."""
        x = self.patch_embed(imgs)  # [N, L, D]
        if token_mask is not None and token_mask.shape != x.shape[:2]:
            raise ValueError(f"token_mask must be (N, L) = {tuple(x.shape[:2])}, got {tuple(token_mask.shape)}")
        pos = self.pos_embed[:, 1:]  # [1, L, D]
        if self.cfg.mode == "simmim":  # removed patch embeddings are replaced by the learned mask token
            visible = token_mask.bool() if token_mask is not None else self.random_masking(x, ratio, generator)[1]
            ids_restore = self.ids_from_mask(visible)[1]
            x = torch.where(visible[..., None], x, self.enc_mask_token.to(x.dtype)) + pos  # [N, L, D]
        elif token_mask is None:
            x, visible, ids_restore = self.random_masking(x + pos, ratio, generator)  # [N, K, D]
        else:
            visible = token_mask.bool()
            ids_keep, ids_restore = self.ids_from_mask(visible)
            x = self._gather(x + pos, ids_keep)  # [N, K, D]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(len(x), -1, -1)
        x = torch.cat([cls, x], dim=1)  # [N, 1+K, D] or [N, 1+L, D]
        hidden, maps = [], []
        for blk in self.blocks:
            x, att = blk(x, return_attention=return_attention)
            hidden.append(x)
            maps.append(att)
        return Encoded(self.norm(x), visible, ids_restore, hidden if return_hidden else None,
                       maps if return_attention else None)

    def decoder_input(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [N, 1+K, D] (or [N, 1+L, D] in simmim mode) → the decoders' input [N, 1+L, Dd]: embedded,
        one mask token per removed patch, un-shuffled, plus the decoder position embedding."""
        x = self.decoder_embed(latent)  # [N, 1+K, Dd]
        if self.cfg.mode == "mae":
            n, length = ids_restore.shape
            masks = self.mask_token.expand(n, length + 1 - x.shape[1], -1)  # [N, L-K, Dd]
            x_ = torch.cat([x[:, 1:], masks], dim=1)  # [N, L, Dd] in shuffled order (visible first)
            x = torch.cat([x[:, :1], self._gather(x_, ids_restore)], dim=1)  # un-shuffled, [N, 1+L, Dd]
        return x + self.decoder_pos_embed

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [N, 1+K, D] (or [N, 1+L, D] in simmim mode) → predicted pixels of every patch [N, L, P]."""
        x = self.decoder_input(latent, ids_restore)
        for blk in self.decoder_blocks:
            x, _ = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # drop [CLS]: [N, L, P]

    def forward_loss_predictor(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """HPM's loss prediction: latent as for ``forward_decoder`` → one score per patch [N, L] (higher =
        predicted harder to reconstruct). Needs ``MAEConfig(loss_predictor=True)``."""
        if self.loss_predictor is None:
            raise ValueError("this MAE has no loss predictor; build it with MAEConfig(loss_predictor=True)")
        return self.loss_predictor(self.decoder_input(latent, ids_restore))

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, visible: torch.Tensor,
                     reduction: str = "mean") -> torch.Tensor:
        """Mean squared error on the removed patches only.

        imgs [N, C, H, W], pred [N, L, P], visible [N, L] bool. ``reduction="none"`` returns the per-patch
        loss [N, L] on every patch (for loss-prediction methods such as HPM); ``"mean"`` averages it over the
        removed patches (0 when none is removed).
        """
        target = self.patchify(imgs)  # [N, L, P]
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # [N, L]
        if reduction == "none":
            return per_patch
        if reduction != "mean":
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        removed = (~visible).to(per_patch.dtype)
        return (per_patch * removed).sum() / removed.sum().clamp(min=1)

    def forward(self, imgs: torch.Tensor, ratio: float = 0.75, token_mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        """→ (loss, pred [N, L, P], visible [N, L] bool, True = visible)."""
        enc = self.forward_encoder(imgs, token_mask, ratio, generator)
        pred = self.forward_decoder(enc.latent, enc.ids_restore)
        return self.forward_loss(imgs, pred, enc.visible), pred, enc.visible


def mae_tiny(**kwargs) -> MAE:
    """d=64, 4 encoder + 2 decoder blocks, 32×32 images in 4×4 patches (64 tokens)."""
    return MAE(MAEConfig(**kwargs))


__all__ = ["MAE", "MAEConfig", "Encoded", "LossPredictor", "mae_tiny", "sincos_pos_embed"]
