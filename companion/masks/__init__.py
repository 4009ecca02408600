"""Mask generators: pure functions (shape, ratio, generator) -> bool tensor, **True = keep**.

``image`` (pixel masks: random patches and blocks, background-only masks, silhouettes, superpixels, colour
noise), ``tokens`` (token masks: exact ratio, disjoint views, hard patches; ``num_visible``), ``attention``
(True = may attend: causal, sliding window, top-k), ``nm`` (N:M parameter masks), ``freeform`` (brush strokes),
``pixel`` (pixel-sparse masks at an exact rate), ``frames`` (span masks over speech frames at an exact rate, with
optional start weights), ``jitter`` (ground-truth masks perturbed to a target IoU). Image and token masks are
re-exported here (``masks.random_patches``); attention and N:M masks are used as ``masks.attention.…``,
``masks.nm.…``.
"""

from . import attention, jitter, nm
from .image import (
                    NOISE_COLOURS,
                    background_blocks,
                    background_patches,
                    colour_noise,
                    colour_noise_mask,
                    grid_segments,
                    radial_power_spectrum,
                    random_blocks,
                    random_patches,
                    segments_to_mask,
                    silhouette,
                    superpixels,
)
from .frames import frame_spans
from .freeform import free_form
from .pixel import pixel_sparse
from .tokens import disjoint_masks, hard_patch_mask, num_visible, token_ratio_mask, token_to_pixel_mask

__all__ = ["attention", "jitter", "nm", "NOISE_COLOURS", "background_blocks", "background_patches", "colour_noise",
           "colour_noise_mask", "grid_segments", "radial_power_spectrum", "random_blocks", "random_patches",
           "frame_spans", "free_form", "pixel_sparse",
           "segments_to_mask", "silhouette", "superpixels", "disjoint_masks", "hard_patch_mask", "num_visible",
           "token_ratio_mask", "token_to_pixel_mask"]
