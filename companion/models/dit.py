"""A tiny text-conditional Diffusion Transformer (DiT) with an optional patch-mixer and token dropping.

Built from the package's one transformer pieces (:mod:`companion.models.layers`): ``PatchEmbed`` turns the
noisy image into L = (H/p)·(W/p) tokens (row-major) with a fixed 2-D sine-cosine position embedding; each
:class:`DiTBlock` adds a projection of the conditioning vector (time embedding + pooled caption) to the tokens,
runs the pre-LN ``Block`` (self-attention, MLP) and then caption cross-attention (``Attention(cross=True)``,
keys and values from the caption tokens); a final LayerNorm and linear layer give p²·C values per token, which
are folded back into an image (N, C, H, W).

Token dropping (Sehwag et al., "Stretching Each Dollar", official code ``SonyResearch/micro_diffusion``,
``models/dit.py``): ``forward(..., keep=ids)`` with ``ids`` (N, K) long, the indices of the K kept tokens of
each image, runs

1. the optional **patch-mixer** (``mixer_depth`` DiT blocks) on *all* L tokens,
2. then gathers the kept tokens (``mask_out_token``) and runs the backbone blocks and the final layer on them,
3. and writes their outputs back to their positions, the dropped patches filled with zeros (``unmask_tokens``
   with the repo's zero ``mask_token`` buffer): the output has the full image shape, and only kept patches carry
   a prediction.

``mixer_depth=0`` with ``keep`` is *naive* masking (tokens dropped before any block); ``mixer_depth > 0`` with
``keep`` is *deferred* masking. Without ``keep`` (sampling, evaluation) every token goes through every block.
Keeping all L tokens, in any order, gives exactly the unmasked output (attention is permutation-equivariant
once the position embedding is added).

Conditioning ``cond``: captions (N, S) long ids (``companion.data.scenes``: S = 4, PAD = 0), or a dict with
``"captions"`` (the ``ToySD`` convention). The time embedding is ``unet1d.sinusoidal_embedding`` → MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import Attention, Block, PatchEmbed
from .mae import sincos_pos_embed
from .unet1d import sinusoidal_embedding


@dataclass
class DiTConfig:
    image_size: int = 16
    patch_size: int = 2
    in_channels: int = 3
    dim: int = 64
    depth: int = 4  # backbone blocks
    heads: int = 4
    mlp_ratio: float = 4.0
    mixer_depth: int = 0  # patch-mixer blocks before token dropping (0 = none)
    vocab_size: int = 9  # caption vocabulary (``companion.data.scenes.VOCAB``)
    caption_len: int = 4


class DiTBlock(nn.Module):
    """x + W·c (conditioning), then ``Block`` (x + self-attn, x + MLP), then x + cross-attn(LN(x), context).

    x (N, L, D), c (N, D), context (N, S, D) → (N, L, D).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, layer_idx: int = 0):
        super().__init__()
        self.cond = nn.Linear(dim, dim)
        self.block = Block(dim, heads, mlp_ratio, layer_idx=layer_idx)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads, cross=True, layer_idx=layer_idx)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x, _ = self.block(x + self.cond(c)[:, None])
        y, _ = self.cross(self.norm_cross(x), context=context)
        return x + y


def gather_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x (N, L, D), keep (N, K) long → the kept tokens (N, K, D), in the order of ``keep``."""
    return torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))


def scatter_tokens(x: torch.Tensor, keep: torch.Tensor, length: int) -> torch.Tensor:
    """x (N, K, P) at positions keep (N, K) → (N, L, P), zeros at the positions not in ``keep``."""
    out = x.new_zeros(x.shape[0], length, x.shape[-1])
    return out.scatter(1, keep[..., None].expand(-1, -1, x.shape[-1]), x)


def keep_index(visible: torch.Tensor) -> torch.Tensor:
    """Bool token mask (N, L), True = keep, the same count K per row → kept indices (N, K) long, ascending."""
    counts = visible.sum(1)
    if len(counts) and not bool((counts == counts[0]).all()):
        raise ValueError("every row must keep the same number of tokens")
    k = int(counts[0]) if len(counts) else 0
    return visible.float().argsort(dim=1, descending=True, stable=True)[:, :k].sort(dim=1).values


class DiT(nn.Module):
    """``model(x_t, t, cond, keep=None) -> (N, C, H, W)`` (the ε prediction); see the module doc."""

    def __init__(self, cfg: DiTConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or DiTConfig(**kwargs)
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        d = cfg.dim
        self.grid = cfg.image_size // cfg.patch_size
        self.num_tokens = self.grid ** 2
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_channels, d)
        self.register_buffer("pos_embed", sincos_pos_embed(d, self.grid, cls_token=False)[None], persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.caption_embed = nn.Embedding(cfg.vocab_size, d)
        self.caption_pos = nn.Parameter(torch.randn(1, cfg.caption_len, d) * 0.02)
        self.caption_pool = nn.Linear(d, d)
        self.mixer = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio, layer_idx=i) for i in range(cfg.mixer_depth))
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio, layer_idx=cfg.mixer_depth + i)
                                    for i in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.patch_size ** 2 * cfg.in_channels)
        nn.init.zeros_(self.head.weight)  # DiT's zero-initialised output: the untrained model predicts ε = 0
        nn.init.zeros_(self.head.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p²·C) → (N, C, H, W), each token's values ordered (channel, row, column) like the patch conv."""
        n, p, g, c = x.shape[0], self.cfg.patch_size, self.grid, self.cfg.in_channels
        x = x.view(n, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)  # (N, C, g, p, g, p)
        return x.reshape(n, c, g * p, g * p)

    def condition(self, t: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """t (N,), cond (captions (N, S) or a dict with them) → (c (N, D), caption context (N, S, D))."""
        captions = cond["captions"] if isinstance(cond, dict) else cond
        if captions is None:
            raise ValueError("the DiT is caption-conditioned: pass captions (N, S) (all PAD for unconditional)")
        context = self.caption_embed(captions.long()) + self.caption_pos
        c = self.time_mlp(sinusoidal_embedding(t, self.cfg.dim)) + self.caption_pool(context.mean(1))
        return c, context

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, H, W), t (N,) levels, cond captions, keep (N, K) long indices of kept tokens or None."""
        c, context = self.condition(t.to(x.device), cond)
        tokens = self.patch_embed(x) + self.pos_embed  # (N, L, D)
        for blk in self.mixer:
            tokens = blk(tokens, c, context)
        if keep is not None:
            tokens = gather_tokens(tokens, keep)  # (N, K, D)
        for blk in self.blocks:
            tokens = blk(tokens, c, context)
        out = self.head(self.norm(tokens))  # (N, K or L, p²·C)
        if keep is not None:
            out = scatter_tokens(out, keep, self.num_tokens)
        return self.unpatchify(out)


__all__ = ["DiT", "DiTBlock", "DiTConfig", "gather_tokens", "keep_index", "scatter_tokens"]
