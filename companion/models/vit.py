"""A tiny Vision Transformer (ViT) with token dropping and attention capture.

Token dropping is the ViT counterpart of layer masking: a patch that is (even partly) removed is not
attended to by any other token, so its content cannot reach the class token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, attend=None, return_attention=False):
        """x (N,L,D); ``attend`` (N,1,1,L) bool: which keys may be attended. Returns (out, attn or None)."""
        n, length, d = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if return_attention:
            att = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
            if attend is not None:
                att = att.masked_fill(~attend, float("-inf"))
            att = att.softmax(dim=-1)  # (N, heads, L, L)
            y = att @ v
        else:
            att = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        return self.proj(y.transpose(1, 2).reshape(n, length, d)), att


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x, attend=None, return_attention=False):
        y, att = self.attn(self.norm1(x), attend, return_attention)
        x = x + y
        return x + self.mlp(self.norm2(x)), att


class ViT(nn.Module):
    """Patch embedding → [CLS] + positional embedding → blocks → LayerNorm → linear head on [CLS]."""

    def __init__(self, cfg: ViTConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or ViTConfig(**kwargs)
        self.grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid**2 + 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def token_keep(self, mask: torch.Tensor) -> torch.Tensor:
        """Pixel keep-mask (N,1,H,W) → patch keep (N,L): a patch is kept only if all its pixels are."""
        p = self.cfg.patch_size
        return (-F.max_pool2d(-mask.float(), p, p)).flatten(1) > 0.5

    def forward_features(self, x, keep_tokens=None, return_attention=False):
        """x (N,C,H,W); keep_tokens (N,L) bool or None. Returns [CLS] features (N,D) (and attention maps)."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, L, D)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        attend = None
        if keep_tokens is not None:
            cls = torch.ones(len(x), 1, dtype=torch.bool, device=x.device)
            attend = torch.cat([cls, keep_tokens], dim=1)[:, None, None, :]  # (N,1,1,L+1)
        maps = []
        for blk in self.blocks:
            tokens, att = blk(tokens, attend, return_attention)
            maps.append(att)
        feats = self.norm(tokens[:, 0])
        return (feats, maps) if return_attention else feats

    def forward_head(self, feats):
        return self.head(feats)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_masked(self, x, mask):
        """Token dropping: removed patches are never attended, so their content has no influence."""
        return self.forward_head(self.forward_features(x, keep_tokens=self.token_keep(mask)))
