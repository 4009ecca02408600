"""The package's one 2-D UNet (two levels), shared by the diffusion family and the click-conditioned segmenter.

(N, in_channels [+ extra_channels], H, W) -> (N, out_channels, H, W); H and W must be even. Level 0 works at
H×W with ``channels[0]``, level 1 at H/2×W/2 with ``channels[1]``: a residual block per level on the way down,
a middle block, and an up path that concatenates the level-0 skip. Each part is optional:

- ``time_dim > 0``: a sinusoidal time embedding (``unet1d.sinusoidal_embedding`` → MLP) added inside every
  residual block; call ``net(x, t)`` with t (N,);
- ``extra_channels > 0``: extra input maps (N, extra_channels, H, W) concatenated to x (click maps, an inpainting
  mask and masked image); call ``net(x, extra=maps)``;
- ``context_dim > 0``: caption cross-attention after the blocks of the levels in ``attn_levels`` (0 = full
  resolution, on the up path; 1 = half resolution, the middle), through the package's one
  :class:`~companion.models.layers.Attention` (``cross=True``); context (N, S, context_dim) is projected to each
  level's width. Per-token maps can be recorded, replaced or re-weighted with ``layers.attention_map_hook``
  (att (N, heads, H·W, S)); ``cross_attention_layers()`` names them;
- ``self_attn_levels``: self-attention over the pixels of those levels (before the cross-attention), the same
  ``Attention`` with the pixels themselves as context. Inside ``with net.cross_frame(frames):`` a batch laid out
  as clips × ``frames`` consecutive frames attends, frame by frame, to the keys and values of the clip's first
  frame and of the frame before it instead of its own (training-free temporal attention for video editing).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from .layers import Attention
from .unet1d import sinusoidal_embedding


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3, (+ projected time embedding), GroupNorm → SiLU → conv3, plus a (1×1) skip."""

    def __init__(self, cin: int, cout: int, time_dim: int = 0):
        super().__init__()
        self.block1 = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.block2 = nn.Sequential(_norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, cout)) if time_dim else None
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.block1(x)
        if self.emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        return self.block2(h) + self.skip(x)


class CrossAttentionBlock(nn.Module):
    """x + Attention(LayerNorm(pixels), projected context), pixels as tokens: (N, C, H, W) → (N, C, H, W)."""

    def __init__(self, channels: int, context_dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.context = nn.Linear(context_dim, channels)
        self.attn = Attention(channels, heads, cross=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, H·W, C)
        out, _ = self.attn(self.norm(tokens), context=self.context(context))
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class SelfAttentionBlock(nn.Module):
    """x + Attention(LayerNorm(pixels), keys/values from the same pixels — or, with ``frames`` set, from the
    clip's first and previous frames): (N, C, H, W) → (N, C, H, W)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = Attention(channels, heads, cross=True)
        self.frames: int | None = None  # set by ``UNet.cross_frame``

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (N, H·W, C)
        context = tokens
        if self.frames is not None:
            if n % self.frames:
                raise ValueError(f"a cross-frame batch holds whole clips of {self.frames} frames, got {n} images")
            clip = tokens.view(n // self.frames, self.frames, h * w, c)
            previous = torch.cat([clip[:, :1], clip[:, :-1]], dim=1)  # frame f-1 (frame 0 for the first)
            context = torch.cat([clip[:, :1].expand_as(clip), previous], dim=2).reshape(n, 2 * h * w, c)
        out, _ = self.attn(tokens, context=context)
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class UNet(nn.Module):
    """A two-level UNet, called as ``net(x, t=None, context=None, extra=None)`` (see the module doc)."""

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, channels=(32, 64), time_dim: int = 0,
                 extra_channels: int = 0, context_dim: int = 0, attn_levels=(1,), heads: int = 4,
                 self_attn_levels=()):
        super().__init__()
        c0, c1 = channels
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.extra_channels, self.time_dim, self.context_dim = extra_channels, time_dim, context_dim
        self.time_mlp = (nn.Sequential(nn.Linear(time_dim, 4 * time_dim), nn.SiLU(), nn.Linear(4 * time_dim, time_dim))
                         if time_dim else None)
        self.conv_in = nn.Conv2d(in_channels + extra_channels, c0, 3, padding=1)
        self.down = ResBlock(c0, c0, time_dim)
        self.pool = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.mid = ResBlock(c1, c1, time_dim)
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c1, c0, 3, padding=1))
        self.up_block = ResBlock(2 * c0, c0, time_dim)
        self.attn = nn.ModuleDict({str(lvl): CrossAttentionBlock((c0, c1)[lvl], context_dim, heads)
                                   for lvl in attn_levels} if context_dim else {})
        self.self_attn = nn.ModuleDict({str(lvl): SelfAttentionBlock((c0, c1)[lvl], heads) for lvl in self_attn_levels})
        self.out = nn.Sequential(_norm(c0), nn.SiLU(), nn.Conv2d(c0, self.out_channels, 3, padding=1))

    def _attend(self, level: int, h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if str(level) in self.self_attn:
            h = self.self_attn[str(level)](h)
        return self.attn[str(level)](h, context) if str(level) in self.attn else h

    def cross_attention_layers(self) -> dict[str, Attention]:
        """The caption cross-attention layers by name (``"level0"``, ``"level1"``): the maps an editor reads."""
        return {f"level{lvl}": block.attn for lvl, block in self.attn.items()}

    @contextmanager
    def cross_frame(self, frames: int):
        """Inside, self-attention reads keys and values from each clip's first and previous frames (module doc)."""
        blocks = list(self.self_attn.values())
        if not blocks:
            raise ValueError("this UNet has no self-attention (build it with self_attn_levels)")
        for b in blocks:
            b.frames = frames
        try:
            yield self
        finally:
            for b in blocks:
                b.frames = None

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, context: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"height and width must be even, got {tuple(x.shape[-2:])}")
        if (extra is None) != (self.extra_channels == 0):
            raise ValueError(f"this UNet takes {self.extra_channels} extra input channels: pass extra accordingly")
        if (t is None) != (self.time_mlp is None):
            raise ValueError("pass t (N,) exactly when the UNet was built with time_dim > 0")
        if (context is None) != (self.context_dim == 0):
            raise ValueError("pass context (N, S, context_dim) exactly when the UNet was built with context_dim > 0")
        emb = None if t is None else self.time_mlp(sinusoidal_embedding(t.to(x.device), self.time_dim))
        h0 = self.down(self.conv_in(x if extra is None else torch.cat([x, extra.to(x)], dim=1)), emb)
        h1 = self._attend(1, self.mid(self.pool(h0), emb), context)
        h = self._attend(0, self.up_block(torch.cat([self.up(h1), h0], dim=1), emb), context)
        return self.out(h)
