"""Token masks: exact-ratio random masks, disjoint view pairs, hard-patch masks, token → pixel masks.

Masks are bool (N, L) over tokens, **True = keep** (visible). ``num_visible`` is the one rounding rule for how
many of L tokens a mask ratio keeps.
"""

from __future__ import annotations

import math

import torch


def num_visible(num_tokens: int, ratio: float) -> int:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return num_tokens - round(ratio * num_tokens)


def token_ratio_mask(n: int, num_tokens: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random token mask (MAE): exactly ``num_tokens - round(ratio * num_tokens)`` visible per row.

    Drawn as MAE does (argsort of uniform noise, smallest noise kept), so with the same generator state it
    equals the mask of ``companion.models.MAE.random_masking``. Returns (N, L) bool, True = visible.
    """
    n_keep = num_visible(num_tokens, ratio)
    rank = torch.rand(n, num_tokens, generator=generator).argsort(dim=1).argsort(dim=1)  # [N, L]
    return rank < n_keep


def token_to_pixel_mask(visible: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, L) token mask on a square grid → (N, 1, H, W) pixel mask with H = W = sqrt(L)·patch."""
    side = math.isqrt(visible.shape[1])
    if side * side != visible.shape[1]:
        raise ValueError(f"token mask length {visible.shape[1]} is not a square grid")
    keep = visible.bool().view(-1, 1, side, side)
    return keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def hard_patch_mask(scores: torch.Tensor, ratio: float, hard_fraction: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """HPM's mask (Wang et al., Hard Patches Mining): remove the hardest patches, then random ones.

    ``scores`` (N, L): predicted difficulty per patch (higher = harder). Of the ``round(ratio·L)`` removed
    patches of each row, ``int(removed · hard_fraction)`` are those with the highest scores; the rest are
    drawn uniformly among the other patches. ``hard_fraction=0`` gives exactly ``token_ratio_mask`` for the
    same generator state. HPM raises ``hard_fraction`` from 0 to 0.5 during training (easy → hard).
    Returns (N, L) bool, True = visible.
    """
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    n, length = scores.shape
    n_keep = num_visible(length, ratio)
    n_hard = int((length - n_keep) * hard_fraction)
    hardest = scores.detach().argsort(dim=1, descending=True).argsort(dim=1) < n_hard  # [N, L]
    noise = torch.rand(n, length, generator=generator).to(scores.device)  # in [0, 1): large noise = removed
    rank = noise.masked_fill(hardest, 2.0).argsort(dim=1).argsort(dim=1)
    return rank < n_keep


def disjoint_masks(n: int, num_tokens: int, ratio: float, generator: torch.Generator | None = None):
    """LUT's masks for two views from one permutation: view 1 keeps the first ``K = num_visible(L, ratio)``
    patches of the permutation, view 2 the next ``K``. Returns two (n, L) bool masks (True = visible) that never
    share a visible patch. Needs ``2K ≤ L`` (a mask ratio of at least about one half)."""
    k = num_visible(num_tokens, ratio)
    if 2 * k > num_tokens:
        raise ValueError(f"ratio {ratio} keeps {k} of {num_tokens} tokens; two disjoint views need ratio >= 0.5")
    order = torch.rand(n, num_tokens, generator=generator).argsort(dim=1)  # [n, L]
    rank = order.argsort(dim=1)  # position of each patch in the permutation
    return rank < k, (rank >= k) & (rank < 2 * k)


