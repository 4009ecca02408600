"""A tiny Vision Transformer (ViT) with token dropping and attention capture.

Token dropping is the ViT counterpart of layer masking: a patch that is (even partly) removed is not
attended to by any other token, so its content cannot reach the class token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Block, PatchEmbed


@dataclass
class ViTConfig:
    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    num_classes: int = 4
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0


class ViT(nn.Module):
    """Patch embedding → [CLS] + positional embedding → blocks → LayerNorm → linear head on [CLS]."""

    def __init__(self, cfg: ViTConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or ViTConfig(**kwargs)
        self.grid = cfg.image_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_channels, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid**2 + 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, layer_idx=i) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def token_keep(self, mask: torch.Tensor) -> torch.Tensor:
        """Pixel keep-mask (N,1,H,W) → patch keep (N,L): a patch is kept only if all its pixels are."""
        p = self.cfg.patch_size
        return (-F.max_pool2d(-mask.float(), p, p)).flatten(1) > 0.5

    def forward_features(self, x, keep_tokens=None, return_attention=False, all_tokens=False):
        """x (N,C,H,W); keep_tokens (N,L) bool or None. Returns [CLS] features (N,D) (and attention maps);
        ``all_tokens``: the final LayerNorm'd states of every token (N,1+L,D), [CLS] first."""
        tokens = self.patch_embed(x)  # (N, L, D)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        attend = None
        if keep_tokens is not None:
            cls = torch.ones(len(x), 1, dtype=torch.bool, device=x.device)
            attend = torch.cat([cls, keep_tokens], dim=1)[:, None, None, :]  # (N,1,1,L+1)
        maps = []
        for blk in self.blocks:
            tokens, att = blk(tokens, attend, return_attention=return_attention)
            maps.append(att)
        feats = self.norm(tokens) if all_tokens else self.norm(tokens[:, 0])
        return (feats, maps) if return_attention else feats

    def forward_head(self, feats):
        return self.head(feats)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_masked(self, x, mask):
        """Token dropping: removed patches are never attended, so their content has no influence."""
        return self.forward_head(self.forward_features(x, keep_tokens=self.token_keep(mask)))
