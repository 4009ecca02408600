"""A tiny video MAE (Tong et al., VideoMAE): the image MAE of ``companion.models.mae`` on tube tokens.

A clip [N, C, T, H, W] is cut into tubes of ``tubelet`` frames × ``patch_size``² pixels by a strided 3-D
convolution; tokens are ordered (time, row, column), L = T/tubelet · (H/patch_size)². Position embeddings are
VideoMAE's fixed 1-D sine-cosine table over the L tokens. Everything else — masking with a token mask
(True = visible), the visible-only encoder, the decoder and the loss on removed tubes — is ``MAE``'s own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

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
