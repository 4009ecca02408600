"""ColorMAE: what a colour-noise mask looks like from the point of view of the masked tokens.

The colour-noise mask generators are in ``companion.masks.image`` (``colour_noise_mask``); here: the share
of masked tokens in each distance band to the nearest visible token.
"""

from __future__ import annotations

import math

import torch

from ... import masks


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
    side = math.isqrt(token_masks.shape[1])
    if side * side != token_masks.shape[1]:
        raise ValueError(f"token mask length {token_masks.shape[1]} is not a square grid")
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()  # [L, 2]
    dist = torch.cdist(pos, pos)  # [L, L]
    visible = token_masks.bool()
    nearest = torch.where(visible[:, None, :], dist, torch.tensor(float("inf"))).min(dim=2).values  # [N, L]
    removed = (~visible).float()
    return (nearest.nan_to_num(posinf=0.0) * removed).sum(1) / removed.sum(1).clamp(min=1)


