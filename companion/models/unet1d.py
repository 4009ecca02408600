"""A 1-D temporal UNet for diffusion over sequences (Janner et al.'s Diffuser UNet, as PDPP uses it).

(N, C, L) -> (N, out, L). Each level has two residual blocks (conv 3 -> GroupNorm -> Mish, with the time embedding,
plus an optional condition vector, added between the two convs), then a stride-2 downsampling conv; the decoder
mirrors it with skip connections. ``L`` must be a multiple of ``2 ** (len(widths) - 1)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) timesteps -> (N, dim) sin/cos features at geometric frequencies (10000 ** -k)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / max(half - 1, 1))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class ConvBlock(nn.Sequential):
    """Conv1d(kernel 3) -> GroupNorm -> Mish, length preserved."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv1d(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.Mish())


class ResidualTemporalBlock(nn.Module):
    """Two conv blocks with the embedding (N, emb_dim) projected and added to every position in between."""

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.block1, self.block2 = ConvBlock(cin, cout), ConvBlock(cout, cout)
        self.emb = nn.Sequential(nn.Mish(), nn.Linear(emb_dim, cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.emb(emb)[:, :, None]
        return self.block2(h) + self.skip(x)


class TemporalUNet(nn.Module):
    """A diffusion denoiser over (N, in_channels, L) sequences, called as ``net(x, t, cond)``.

    ``widths`` are the channel counts per level (``len(widths) - 1`` halvings of L); ``time_dim`` the width of the
    time embedding; ``cond_dim > 0`` adds a linear projection of ``cond`` (N, cond_dim) to the time embedding.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, widths=(32, 64), time_dim: int = 32,
                 cond_dim: int = 0):
        super().__init__()
        widths = tuple(widths)
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.widths, self.time_dim, self.cond_dim = widths, time_dim, cond_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 4 * time_dim), nn.Mish(), nn.Linear(4 * time_dim, time_dim))
        self.cond_proj = nn.Linear(cond_dim, time_dim) if cond_dim > 0 else None
        dims = (in_channels,) + widths
        self.downs = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(widths) - 1
            self.downs.append(nn.ModuleList([
                ResidualTemporalBlock(cin, cout, time_dim), ResidualTemporalBlock(cout, cout, time_dim),
                nn.Identity() if last else nn.Conv1d(cout, cout, 3, stride=2, padding=1)]))
        self.mid1 = ResidualTemporalBlock(widths[-1], widths[-1], time_dim)
        self.mid2 = ResidualTemporalBlock(widths[-1], widths[-1], time_dim)
        self.ups = nn.ModuleList()
        for deep, shallow in zip(widths[::-1][:-1], widths[::-1][1:]):   # upsample, concatenate the skip, blocks
            self.ups.append(nn.ModuleList([
                nn.ConvTranspose1d(deep, deep, 4, stride=2, padding=1),
                ResidualTemporalBlock(deep + shallow, shallow, time_dim),
                ResidualTemporalBlock(shallow, shallow, time_dim)]))
        self.final = nn.Sequential(ConvBlock(widths[0], widths[0]), nn.Conv1d(widths[0], self.out_channels, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        factor = 2 ** (len(self.widths) - 1)
        if x.shape[-1] % factor:
            raise ValueError(f"length {x.shape[-1]} is not a multiple of {factor}")
        emb = self.time_mlp(sinusoidal_embedding(t.to(x.device), self.time_dim))
        if self.cond_proj is not None:
            if cond is None:
                raise ValueError("this TemporalUNet was built with cond_dim > 0: pass cond (N, cond_dim)")
            emb = emb + self.cond_proj(cond.to(emb))
        skips = []
        for block1, block2, down in self.downs:
            x = block2(block1(x, emb), emb)
            skips.append(x)
            x = down(x)
        x = self.mid2(self.mid1(x, emb), emb)
        skips.pop()                                         # the deepest level has no upsampling partner
        for (up, block1, block2), skip in zip(self.ups, reversed(skips)):
            x = up(x)
            x = block2(block1(torch.cat([x, skip], dim=1), emb), emb)
        return self.final(x)
