"""ColorMAE (Hinojosa et al., 2024): what colour-noise masks look like to the tokens, and the data around them.

The colour-noise mask generators are in ``companion.masks.image`` (``colour_noise_mask``); here: the spectral
band shares and spatial statistics of token masks (``band_shares``, ``distance_to_visible``,
``visible_clustering``), a 50/50 mixture of two mask generators (``mixture``), and a pretrained MAE moved to a
larger token grid (``at_resolution``).

Token masks are bool (N, L) on a square grid, row-major, True = visible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ... import masks


def _side(token_masks: torch.Tensor) -> int:
    side = math.isqrt(token_masks.shape[1])
    if side * side != token_masks.shape[1]:
        raise ValueError(f"token mask length {token_masks.shape[1]} is not a square grid")
    return side


def band_shares(token_masks: torch.Tensor, edges: tuple[float, ...] = (1 / 6, 1 / 3)) -> torch.Tensor:
    """Per-mask share of spectral power in frequency bands: low / middle / high for the default ``edges``.

    token_masks (N, L) on a square grid. Each mask's radially averaged power spectrum
    (``masks.radial_power_spectrum``, mean removed) is split at ``edges`` (cycles per token, bands are
    right-closed: (0, e0], (e0, e1], ..., (e_last, 0.5]) and normalised to sum 1. Returns (N, len(edges) + 1).
    """
    out = []
    for m in token_masks:
        freq, power = masks.radial_power_spectrum(m[None])
        band = torch.bucketize(freq, torch.tensor(edges, dtype=freq.dtype))  # right-closed bands
        shares = torch.zeros(len(edges) + 1).index_add_(0, band[1:], power[1:])  # radius 0 carries no power
        out.append(shares / shares.sum().clamp(min=1e-12))
    return torch.stack(out)


def distance_to_visible(token_masks: torch.Tensor) -> torch.Tensor:
    """Mean distance (in tokens) from each removed token to its nearest visible token, per mask: (N,).

    A simple measure of how far a masked patch's context is: larger means a harder reconstruction.
    """
    side = _side(token_masks)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()  # [L, 2]
    dist = torch.cdist(pos, pos)  # [L, L]
    visible = token_masks.bool()
    nearest = torch.where(visible[:, None, :], dist, torch.tensor(float("inf"))).min(dim=2).values  # [N, L]
    removed = (~visible).float()
    return (nearest.nan_to_num(posinf=0.0) * removed).sum(1) / removed.sum(1).clamp(min=1)


def visible_clustering(token_masks: torch.Tensor) -> torch.Tensor:
    """Share of visible tokens with at least one visible 4-neighbour, per mask: (N,).

    Uniform random masks at ratio r leave a visible token's four neighbours visible independently with
    probability about 1 − r; band-pass (green) masks keep the visible tokens in small islands (higher share),
    high-pass (blue) masks spread them apart (lower share). Tokens on the border have fewer neighbours.
    """
    side = _side(token_masks)
    v = token_masks.bool().view(-1, 1, side, side).float()
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    neighbours = F.conv2d(v, cross, padding=1)  # visible 4-neighbours of each token
    clustered = ((neighbours > 0).float() * v).flatten(1).sum(1)
    return clustered / v.flatten(1).sum(1).clamp(min=1)


def mixture(first, second, share: float = 0.5):
    """A mask generator ``(n, generator) -> (n, L)`` drawing each mask from ``first`` with probability ``share``,
    otherwise from ``second`` (both generators ``(n, generator) -> (n, L)`` bool with the same L)."""
    def draw(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        pick = torch.rand(n, generator=generator) < share  # [n]
        return torch.where(pick[:, None], first(n, generator), second(n, generator))

    return draw


def at_resolution(model, image_size: int):
    """A trainable copy of an MAE for ``image_size``-pixel images: the same weights (patch embedding, blocks,
    decoder), the fixed sine-cosine position embeddings rebuilt for the new grid (they are not parameters).

    E.g. the zoo's 32-px MAE with 4-px patches (8×8 tokens) → 56-px images, a 14×14 grid.
    """
    from dataclasses import replace

    from ...models import MAE

    out = MAE(replace(model.cfg, image_size=image_size))
    out.load_state_dict(model.state_dict())
    return out.to(next(model.parameters()).device).train().requires_grad_(True)

